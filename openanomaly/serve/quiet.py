"""A closed browser tab is not an error: keep request-cancelled tracebacks out of the Serve log.

A playground tab holds requests open (Gradio's event stream and heartbeat, a Run in
progress). Closing it makes Ray Serve cancel them, and where the cancellation reaches
code waiting on Ray, Ray raises ``TaskCancelledError`` (``RequestCancelledError`` for a
Serve handle). Serve's replica logs that as ``Request failed.`` with a traceback, asyncio
as ``Task exception was never retrieved``, and Gradio prints the traceback of a handler
that raised it. None of them is a failure, so:

- :class:`CancelledRequestFilter`, put on those loggers in the ingress replica by
  :func:`quiet_cancelled_requests`, turns such a record into one INFO line without the
  traceback (records of any other error pass unchanged);
- the playground's handlers ask :func:`is_cancelled` and end quietly instead of
  re-raising into Gradio.

Importing this module does not import Ray: a cancellation can only come from Ray once
Ray is loaded, so :func:`is_cancelled` looks it up in ``sys.modules``.
"""

from __future__ import annotations

import logging
import sys

__all__ = [
    "LOGGERS",
    "CancelledRequestFilter",
    "end_quietly_if_cancelled",
    "is_cancelled",
    "quiet_cancelled_requests",
]

log = logging.getLogger(__name__)

LOGGERS = ("ray.serve", "asyncio")
"""Loggers that report a cancelled request with a traceback: Serve's replica, asyncio's loop."""


def is_cancelled(error: BaseException | None) -> bool:
    """True for Ray's ``TaskCancelledError`` (and Serve's ``RequestCancelledError``, a subclass)."""
    exceptions = sys.modules.get("ray.exceptions")
    return error is not None and exceptions is not None and isinstance(error, exceptions.TaskCancelledError)


class CancelledRequestFilter(logging.Filter):
    """Rewrite a record whose exception is a cancellation to one INFO line; pass the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not is_cancelled(error):
            return True
        record.msg = "request cancelled (the client went away, e.g. a closed browser tab): %s"
        record.args = (type(error).__name__,)
        record.exc_info = None
        record.exc_text = None
        record.levelno = logging.INFO
        record.levelname = logging.getLevelName(logging.INFO)
        return True


_FILTER = CancelledRequestFilter()


def quiet_cancelled_requests() -> None:
    """Put the filter on :data:`LOGGERS` in this process (idempotent: once per logger)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def end_quietly_if_cancelled(error: Exception) -> None:
    """In a Gradio handler: end a cancelled request as a ``gr.Error`` that Gradio does not print.

    Returns (doing nothing) for any other error, which the caller re-raises.

    Raises:
        gradio.Error: ``error`` is a cancellation (nobody is left to read the message).
    """
    if not is_cancelled(error):
        return
    import gradio as gr

    log.info("playground request cancelled (the client went away): %s", type(error).__name__)
    raise gr.Error("the request was cancelled", print_exception=False) from None
