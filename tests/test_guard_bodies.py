"""Large bodies are parsed in a worker process (``serve.bodies``) with the same result
and the same errors, field and status included, as ``parse_request`` in-process."""

from __future__ import annotations

import asyncio
import json

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
