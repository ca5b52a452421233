"""The playground's Pipelines tab: the pipelines' list with their state, a YAML editor with
the API's validation, create, delete, run now, and a backtest of a range.

Every action goes through :class:`~openanomaly.configstore.admin.PipelineAdmin`, the code
behind ``/v1/pipelines``, so the tab shows the API's (and ``openanomaly validate``'s)
messages and takes the same ``ETag`` precautions: an edit saved over someone else's newer
version is refused. Writes need a principal that may write (the admin token's login);
a reader sees the list and runs backtests, which write nothing.

:class:`PipelinesPanel` holds the handlers apart from the layout, so they are testable
with plain calls; :func:`pipelines_tab` lays them out inside a ``gr.Blocks``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from openanomaly.configstore.admin import (
    PipelineAdmin,
    PipelineInvalid,
    definition_name,
    parse_definition,
    to_yaml,
)
from openanomaly.core.times import format_iso
from openanomaly.errors import OpenAnomalyError, PlaygroundInputError
from openanomaly.serve.quiet import end_quietly_if_cancelled
from openanomaly.ui.compute import RANGE_CHOICES, PlaygroundResult

if TYPE_CHECKING:
    import gradio as gr
    import pandas as pd

    from openanomaly.core.config import Pipeline

__all__ = ["NEW", "TEMPLATE", "Backtester", "PipelinesPanel", "Writer", "pipelines_tab"]

log = logging.getLogger(__name__)

NEW = "(new pipeline)"
"""Picker entry that opens :data:`TEMPLATE` in the editor."""

TEMPLATE = """\
name: my-pipeline
query: sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))
step: 1m
model: default
schedule:
  infer_every: 5m
  context: 7d
"""

COLUMNS = ["name", "state", "model", "every", "last run", "lag (s)", "series", "last error"]

Writer = Callable[[Mapping[str, str], Mapping[str, str]], "str | None"]
"""``(headers, cookies)`` → the name of who may write (e.g. ``admin``), or ``None`` if not allowed."""


class Backtester(Protocol):
    """What the tab needs of the playground that holds it (``openanomaly.ui.app.Playground``
    is one): scoring a pipeline over a range, nothing written. Named here so the tab does
    not import the app that builds it."""

    def score_pipeline(
        self, pipeline: Pipeline, *, range_choice: str, start: str = "", end: str = ""
    ) -> PlaygroundResult: ...


def _message(error: OpenAnomalyError) -> str:
    if isinstance(error, PipelineInvalid):
        return "\n".join(f"- `{p.field or 'body'}`: {p.message}" for p in error.problems)
    return str(error)


@dataclass
class PipelinesPanel:
    """The tab's handlers.

    Args:
        admin: returns the admin (raises :class:`SchedulerUnavailable` while it cannot open).
        playground: scores backtests (the Explore tab's code, the production window path).
        writer: who may write, from the request; ``None``: no auth (standalone playground).
        trigger: runs a pipeline's due windows now (the scheduler's ``trigger``); ``None``:
            no scheduler here, the button says so.
    """

    admin: Callable[[], PipelineAdmin]
    playground: Backtester
    writer: Writer | None = None
    trigger: Callable[[str], Mapping[str, Any]] | None = None

    def _who(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str:
        if self.writer is None:
            return "playground"
        who = self.writer(headers, cookies)
        if who is None:
            raise PlaygroundInputError(
                "read-only: sign in with the admin token to change pipelines", field="Pipeline"
            )
        return who

    def table(self) -> pd.DataFrame:
        """One row per stored pipeline: schedule, model, state, last run, lag, series, last error."""
        import pandas as pd

        overview = self.admin().overview()
        rows = []
        for row in overview["pipelines"]:
            finished = row.get("last_run_finished")
            lag = row.get("lag_s")
            rows.append(
                [
                    row["name"],
                    row.get("state"),
                    row.get("model") or row.get("spec"),
                    row.get("infer_every"),
                    format_iso(int(finished * 1000)) if finished else "",
                    round(lag) if lag is not None else None,
                    row.get("series_scored"),
                    row.get("last_error") or "",
                ]
            )
        return pd.DataFrame(rows, columns=COLUMNS)

    def names(self) -> list[str]:
        return [NEW, *(stored.name for stored in self.admin().definitions())]

    def open(self, name: str) -> tuple[str, str]:
        """``(yaml, etag)`` of a stored pipeline; the template and no etag for :data:`NEW`."""
        if not name or name == NEW:
            return TEMPLATE, ""
        stored = self.admin().get(name)
        return to_yaml(stored.definition), stored.etag

    def validate(self, text: str) -> str:
        definition = parse_definition(text)
        name = definition_name(definition)
        self.admin().check(name, definition)
        return f"`{name}` is valid."

    def save(
        self, selected: str, text: str, etag: str, headers: Mapping[str, str], cookies: Mapping[str, str]
    ) -> tuple[str, str, str]:
        """Create or replace; ``(name, new etag, message)``.

        Replacing needs the etag it was opened with (a newer version saved meanwhile is
        refused, not overwritten); a name other than the opened one creates a new pipeline
        and never replaces an existing one.
        """
        who = self._who(headers, cookies)
        definition = parse_definition(text)
        name = definition_name(definition)
        editing = selected == name and bool(etag)
        stored, created = self.admin().put(
            name,
            definition,
            who=who,
            if_match=etag if editing else None,
            if_none_match=not editing,
        )
        what = "created" if created else "saved"
        return name, stored.etag, f"`{name}` {what}; the scheduler picks it up on its next tick."

    def delete(self, name: str, etag: str, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str:
        who = self._who(headers, cookies)
        if not name or name == NEW:
            raise PlaygroundInputError("pick a pipeline to delete", field="Pipeline")
        self.admin().delete(name, who=who, if_match=etag or None)
        return f"`{name}` deleted."

    def run_now(self, name: str, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str:
        self._who(headers, cookies)
        if not name or name == NEW:
            raise PlaygroundInputError("pick a saved pipeline to run", field="Pipeline")
        if self.trigger is None:
            raise PlaygroundInputError(
                "no scheduler runs here: the playground cannot run pipelines", field="Run now"
            )
        try:
            result = self.trigger(name)
        except KeyError:
            raise PlaygroundInputError(
                f"the scheduler has not picked {name!r} up yet; try again in a few seconds",
                field="Run now",
            ) from None
        windows = len(result.get("windows") or [])
        return f"`{name}`: {result.get('status')} ({windows} windows)"

    def backtest(self, text: str, range_choice: str, start: str, end: str) -> PlaygroundResult:
        """Score the editor's pipeline over the range (saved or not); nothing is written."""
        definition = parse_definition(text)
        name = definition_name(definition)
        pipeline = self.admin().check(name, definition)
        return self.playground.score_pipeline(pipeline, range_choice=range_choice, start=start, end=end)


def _request_parts(request: gr.Request | None) -> tuple[dict[str, str], dict[str, str]]:
    if request is None:
        return {}, {}
    return dict(getattr(request, "headers", {}) or {}), dict(getattr(request, "cookies", {}) or {})


def pipelines_tab(blocks: gr.Blocks, panel: PipelinesPanel) -> None:
    """Lay out the tab inside the current ``gr.Tab`` of ``blocks``; the list fills on page load."""
    import gradio as gr
    from gradio.components.plot import PlotData

    from openanomaly.ui.compute import chart_json, make_chart

    def guarded(function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` with its user errors as readable toasts.

        Gradio passes a ``gr.Request`` to a parameter typed as one: it reads the
        signature (kept by ``wraps``) and the evaluated type hints, which string
        annotations (this module's ``__future__`` import) would hide, so they are set here.
        """

        @functools.wraps(function)
        def call(*args: Any) -> Any:
            try:
                return function(*args)
            except OpenAnomalyError as error:
                log.info("pipelines tab: %s", error)
                raise gr.Error(_message(error), title=type(error).__name__, print_exception=False) from None
            except Exception as error:
                end_quietly_if_cancelled(error)  # a closed tab: not a bug, no traceback
                raise

        call.__annotations__ = {"request": gr.Request} if "request" in function.__annotations__ else {}
        return call

    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", scale=0)
        status = gr.Markdown("")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, label="Pipelines")
    with gr.Row():
        with gr.Column(scale=2):
            picker = gr.Dropdown([NEW], value=NEW, label="Pipeline", allow_custom_value=False)
            editor = gr.Code(TEMPLATE, language="yaml", label="Definition (YAML)", lines=14)
            etag = gr.State("")
            with gr.Row():
                validate = gr.Button("Validate")
                save = gr.Button("Save", variant="primary")
                run = gr.Button("Run now")
                delete = gr.Button("Delete", variant="stop")
        with gr.Column(scale=3):
            with gr.Row():
                range_choice = gr.Radio(list(RANGE_CHOICES), value="last 6h", label="Backtest range")
            with gr.Row():
                start = gr.Textbox("now-1d", label="Start (custom)")
                end = gr.Textbox("now", label="End (custom)")
            backtest = gr.Button("Backtest this range")
            summary = gr.Markdown("")
    # Below both columns, the page's full width: the chart is drawn at a fixed width (a
    # Vega-Lite concat cannot follow its container), which overflowed the right column
    # and lost its left edge (legend, y-axis labels) to the centring.
    plot = gr.Plot(label="Backtest", show_label=False, elem_id="pipelines-backtest-plot")

    @guarded
    def refreshed(selected: str) -> tuple[Any, Any]:
        names = panel.names()
        return panel.table(), gr.update(choices=names, value=selected if selected in names else NEW)

    @guarded
    def opened(name: str) -> tuple[str, str]:
        return panel.open(name)

    @guarded
    def validated(text: str) -> str:
        return panel.validate(text)

    @guarded
    def saved(selected: str, text: str, tag: str, request: gr.Request) -> tuple[Any, ...]:
        name, new_tag, message = panel.save(selected, text, tag, *_request_parts(request))
        return message, new_tag, panel.table(), gr.update(choices=panel.names(), value=name)

    @guarded
    def deleted(name: str, tag: str, request: gr.Request) -> tuple[Any, ...]:
        message = panel.delete(name, tag, *_request_parts(request))
        return message, "", panel.table(), gr.update(choices=panel.names(), value=NEW)

    @guarded
    def ran(name: str, request: gr.Request) -> tuple[str, Any]:
        return panel.run_now(name, *_request_parts(request)), panel.table()

    @guarded
    def backtested(text: str, choice: str, first: str, last: str) -> tuple[Any, str]:
        result = panel.backtest(text, choice, first, last)
        shown = PlotData(type="altair", plot=chart_json(make_chart(result))) if result.shown else None
        return shown, result.summary()

    blocks.load(refreshed, picker, [table, picker])
    refresh.click(refreshed, picker, [table, picker])
    picker.change(opened, picker, [editor, etag])
    validate.click(validated, editor, status)
    save.click(saved, [picker, editor, etag], [status, etag, table, picker])
    delete.click(deleted, [picker, etag], [status, etag, table, picker])
    run.click(ran, picker, [status, table])
    backtest.click(backtested, [editor, range_choice, start, end], [plot, summary], concurrency_limit=1)
