"""Large bodies are parsed in a worker process (``serve.bodies``) with the same result
and the same errors, field and status included, as ``parse_request`` in-process."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from openanomaly.serve.bodies import PROCESS_BODY_BYTES, parse_body
from openanomaly.serve.schemas import ForecastRequest, Limits, RequestError, parse_request


def _body(series: int, points: int, **extra: object) -> bytes:
    values = np.round(np.random.default_rng(1).normal(100, 10, (series, points)), 2)
    return json.dumps(
        {"horizon": 4, "series": [{"values": row.tolist()} for row in values], **extra}
    ).encode()


def test_a_large_body_parses_in_a_process_as_in_process() -> None:
    body = _body(200, 1000)
    assert len(body) > PROCESS_BODY_BYTES
    parsed = asyncio.run(parse_body(ForecastRequest, body, Limits()))
    assert parsed == parse_request(ForecastRequest, body, Limits())


@pytest.mark.parametrize(
    ("extra", "limits", "field", "status"),
    [({"horizon": 0}, Limits(), "horizon", 422), ({}, Limits(max_total_points=1000), "series", 413)],
)
def test_errors_come_back_from_the_process_whole(
    extra: dict[str, object], limits: Limits, field: str, status: int
) -> None:
    body = _body(200, 1000, **extra)
    with pytest.raises(RequestError) as refused:
        asyncio.run(parse_body(ForecastRequest, body, limits))
    assert (refused.value.field, refused.value.status) == (field, status)
    assert str(refused.value).startswith(f"{field}: ") and not str(refused.value).startswith(
        f"{field}: {field}"
    )


async def _longest_loop_stall(body: bytes) -> tuple[float, float]:
    """The longest the event loop went without a turn while ``body`` was parsed, and how
    long the parse took, in seconds."""
    parsing = asyncio.ensure_future(parse_body(ForecastRequest, body, Limits()))
    start = last = time.perf_counter()
    stall = 0.0
    while not parsing.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        stall, last = max(stall, now - last), now
    await parsing
    return stall, time.perf_counter() - start


def test_the_event_loop_keeps_turning_while_the_largest_body_is_parsed() -> None:
    """Issue 11: the mechanism, not a latency. Parsed in a thread, pydantic holds the GIL
    for the whole body, so the loop stalls for about half the parse (measured 0.45-0.6);
    in the worker process it stalls for a twentieth (0.05). Stalls from a busy machine
    only lengthen some runs, so the best of three is compared."""
    body = _body(1000, 1000)
    asyncio.run(parse_body(ForecastRequest, body, Limits()))  # spawns the process once
    shares = []
    for _ in range(3):
        stall, seconds = asyncio.run(_longest_loop_stall(body))
        shares.append(stall / seconds)
    print(f"longest event-loop stall over parse time, 3 runs: {[round(s, 3) for s in shares]}")
    assert min(shares) < 0.25
