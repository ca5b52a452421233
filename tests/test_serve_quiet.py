"""A closed browser tab is not an error: Ray's request-cancelled exceptions leave no traceback.

Closing a playground tab makes Serve cancel its open requests; where that reaches code
waiting on Ray, Ray raises ``TaskCancelledError`` (Serve: ``RequestCancelledError``),
which the replica logs as "Request failed." with a traceback, asyncio as "Task exception
was never retrieved", and Gradio prints for a handler that raised it. The ingress puts
``CancelledRequestFilter`` on those loggers, and the playground's handlers end such a
request quietly; any other error keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import gradio as gr
import pytest
from ray.exceptions import TaskCancelledError
from ray.serve.exceptions import RequestCancelledError

from openanomaly.cli import EXAMPLES_DIR
from openanomaly.serve.quiet import (
    LOGGERS,
    CancelledRequestFilter,
    end_quietly_if_cancelled,
    quiet_cancelled_requests,
)
from openanomaly.ui import Playground
from openanomaly.ui.explore_tab import SOURCES
from openanomaly.ui.pipelines_tab import PipelinesPanel, pipelines_tab


@pytest.fixture
def quiet() -> Iterator[None]:
    """The ingress replica's set-up, undone afterwards so other tests see Ray's loggers as they were."""
    before = {name: list(logging.getLogger(name).filters) for name in LOGGERS}
    quiet_cancelled_requests()
    quiet_cancelled_requests()  # idempotent: one filter per logger
    try:
        yield
    finally:
        for name, filters in before.items():
            logging.getLogger(name).filters[:] = filters


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize("logger", LOGGERS)
def test_a_cancelled_request_is_one_info_line_without_traceback(quiet, caplog, logger: str) -> None:
    filters = logging.getLogger(logger).filters
    assert sum(isinstance(f, CancelledRequestFilter) for f in filters) == 1
    caplog.set_level(logging.INFO, logger=logger)
    for error in (RequestCancelledError("abc123"), TaskCancelledError()):
        try:
            _raise(error)
        except Exception:
            logging.getLogger(logger).exception("Request failed.")
    try:
        _raise(ValueError("a real bug"))
    except ValueError:
        logging.getLogger(logger).exception("Request failed.")
    cancelled, cancelled_task, bug = caplog.records
    for record, name in ((cancelled, "RequestCancelledError"), (cancelled_task, "TaskCancelledError")):
        assert record.levelno == logging.INFO and record.exc_info is None
        assert record.getMessage() == (
            f"request cancelled (the client went away, e.g. a closed browser tab): {name}"
        )
    assert bug.levelno == logging.ERROR and bug.exc_info is not None and "Traceback" in caplog.text
    assert "a real bug" in caplog.text and "abc123" not in caplog.text


def test_gradio_handlers_end_a_cancelled_request_without_printing_it() -> None:
    with pytest.raises(gr.Error) as ended:
        end_quietly_if_cancelled(RequestCancelledError("abc123"))
    assert ended.value.print_exception is False
    assert end_quietly_if_cancelled(ValueError("a bug")) is None  # the caller re-raises it

    def cancelled_forecaster(pipeline):
        raise RequestCancelledError("abc123")

    csv = EXAMPLES_DIR / "data" / "ec2_request_latency_system_failure.csv"
    form = [SOURCES[1], "", "", "", "last 6h", "", "", str(csv), "mad", "5m", "1h", "5m", 0.05, 0.95, 6]
    with pytest.raises(gr.Error) as run:
        Playground(forecaster_factory=cancelled_forecaster).handle(*form)
    assert run.value.print_exception is False


def test_the_pipelines_tab_ends_a_cancelled_request_quietly() -> None:
    def cancelled_admin():
        raise RequestCancelledError("abc123")

    with gr.Blocks() as blocks:
        pipelines_tab(blocks, PipelinesPanel(admin=cancelled_admin, playground=Playground()))
    validated = next(fn for fn in blocks.fns.values() if getattr(fn.fn, "__name__", None) == "validated")
    with pytest.raises(gr.Error) as ended:
        validated.fn("name: x\nquery: up\nmodel: mad\n")
    assert ended.value.print_exception is False


def test_importing_the_filter_does_not_import_ray() -> None:
    import subprocess

    code = "import sys, openanomaly.serve.quiet, openanomaly.ui.app; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
