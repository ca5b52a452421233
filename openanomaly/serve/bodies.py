"""Parse request bodies without stalling the ingress: large ones in a worker process.

pydantic-core validates a JSON body in Rust, holding the GIL throughout, for a time
that grows with the body: the largest body the default limits admit (1000 series of
1000 values, about 7 MiB) holds it long enough to be seen in every other request's
latency. A worker *thread* does not help there, since the event loop (``/healthz``,
every other request) waits for the same GIL, so ``/healthz`` stalls behind each such
body parsed in a thread. So bodies over
``PROCESS_BODY_BYTES`` are parsed in a separate process; the parsed request comes
back pickled and is rebuilt in the executor's own thread one series object at a time,
so the GIL changes hands between series. Smaller bodies parse in a thread, where a
process round trip would cost more than it saves.

The process is spawned (a fresh interpreter, never a fork of a Ray worker with its
threads) on the first large body, which waits for it to start, once per replica.
``PARSE_PROCESSES`` of them parse one body each at a time: large bodies queue there
rather than multiply the ingress's memory.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from openanomaly.serve.schemas import DetectRequest, ForecastRequest, Limits, parse_request

__all__ = ["PARSE_PROCESSES", "PROCESS_BODY_BYTES", "parse_body"]

PROCESS_BODY_BYTES = 2**20
"""Bodies over this many bytes are parsed in a worker process; below it, the process round
trip costs more than the GIL time it saves."""

PARSE_PROCESSES = 1
"""Worker processes per ingress replica."""

_R = TypeVar("_R", ForecastRequest, DetectRequest)

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(PARSE_PROCESSES, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _discard(pool: ProcessPoolExecutor) -> None:
    """Forget a pool whose process died (e.g. killed for memory): the next body starts a new one."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


async def parse_body(model: type[_R], body: bytes, limits: Limits) -> _R:
    """``parse_request`` off the event loop: in a thread, or for a large body in a process.

    Raises:
        RequestError: as ``parse_request``.
        BrokenProcessPool: the parsing process died; the next large body starts another.
    """
    if len(body) <= PROCESS_BODY_BYTES:
        return await asyncio.to_thread(parse_request, model, body, limits)
    pool = _executor()
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, parse_request, model, body, limits)
    except BrokenProcessPool:
        _discard(pool)
        raise
