"""The playground's Explore tab: the form (pipeline or query, or a CSV; model, range, band), Run,
and the chart and episodes it shows. Its handlers are the :class:`Explorer`'s (the
playground's state, :class:`openanomaly.ui.app.Playground`), so the layout holds no logic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from openanomaly.errors import OpenAnomalyError
from openanomaly.ui.compute import DEFAULT_MAX_SERIES, MODEL_CHOICES, RANGE_CHOICES, infer_step

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["AD_HOC", "SOURCES", "Explorer", "current_url", "explore_tab", "model_choices"]

AD_HOC = "(ad-hoc query)"
"""Pipeline picker entry for a query typed by hand."""

SOURCES = ("TSDB query", "CSV upload")
"""Where the series comes from: the TSDB, or an uploaded ``timestamp,value`` file."""


class Explorer(Protocol):
    """What the tab needs of the playground's state."""

    def pipeline_names(self) -> list[str]: ...

    def form_for(self, name: str) -> dict[str, Any]: ...

    def default_url(self) -> str: ...

    def handle(self, *values: Any) -> Any: ...


_INTRO = """## OpenAnomaly playground
Pick a pipeline from the pipelines file or type a PromQL query (or upload a `timestamp,value` CSV),
choose a model and a range, and press **Run**. The scores are those a backtest would write
(`anomaly_score > 1` = outside the band); nothing is written to the TSDB."""


def explore_tab(playground: Explorer) -> tuple[gr.Dropdown, gr.Textbox]:
    """Lay the tab out inside the current ``gr.Tab``; returns the pipeline picker and the URL
    shown, which the page refreshes on load (the file may have changed since it was built).

    Raises:
        ConfigError: the pipelines file does not load (the page is not built).
    """
    import gradio as gr

    names = playground.pipeline_names()  # loads the config now: a bad file fails the build
    first = names[1] if len(names) > 1 else AD_HOC
    form = playground.form_for(first)
    gr.Markdown(_INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Source")
            with gr.Group(visible=True) as tsdb_group:
                pipeline = gr.Dropdown(names, value=first, label="Pipeline")
                query = gr.Textbox(form["query"], label="Query", placeholder="rate(http_requests_total[5m])")
                # Shown, not typed: Run always queries the TSDB configured now.
                tsdb_url = gr.Textbox(
                    playground.default_url(),
                    label="TSDB URL",
                    interactive=False,
                    info="the configured TSDB, re-read on every run",
                )
                range_choice = gr.Radio(list(RANGE_CHOICES), value="last 6h", label="Range")
                with gr.Row(visible=False) as custom_row:
                    start = gr.Textbox("now-1d", label="Start", placeholder="2024-05-01T12:00:00Z / now-2d")
                    end = gr.Textbox("now", label="End")
                max_series = gr.Slider(1, 20, value=DEFAULT_MAX_SERIES, step=1, label="Series shown")
            with gr.Group(visible=False) as csv_group:
                csv_file = gr.File(label="CSV file (timestamp,value)", file_types=[".csv"], type="filepath")
            model = gr.Dropdown(
                model_choices(form["model"]),
                value=form["model"],
                allow_custom_value=True,
                label="Model",
                info="the listed specs and the configured pipelines' models",
            )
            with gr.Row():
                step = gr.Textbox(form["step"], label="Step", min_width=80)
                context = gr.Textbox(form["context"], label="Context", min_width=80)
                infer_every = gr.Textbox(form["infer_every"], label="Forecast every", min_width=80)
            with gr.Row():
                q_low = gr.Number(form["q_low"], label="Band low quantile", minimum=0, maximum=0.5)
                q_high = gr.Number(form["q_high"], label="Band high quantile", minimum=0.5, maximum=1)
            run = gr.Button("Run", variant="primary")
        with gr.Column(scale=3):
            summary = gr.Markdown("Press **Run** to score the range.")
            plot = gr.Plot(label="Forecast band and anomalies", show_label=False)
            episodes = gr.Dataframe(
                label="Anomaly episodes (consecutive points with score > 1)",
                headers=["start", "end", "points", "max_score", "peak_value", "series"],
                interactive=False,
                wrap=True,
            )

    def pick_source(choice: str) -> tuple[Any, Any]:
        return gr.update(visible=choice == SOURCES[0]), gr.update(visible=choice == SOURCES[1])

    def pick_range(choice: str) -> Any:
        return gr.update(visible=choice == "custom")

    def pick_pipeline(name: str) -> tuple[Any, ...]:
        try:
            values = playground.form_for(name)
        except OpenAnomalyError as error:
            raise gr.Error(str(error), print_exception=False) from None
        return (
            values["query"],
            gr.update(choices=model_choices(values["model"]), value=values["model"]),
            values["step"],
            values["context"],
            values["infer_every"],
            values["q_low"],
            values["q_high"],
        )

    def pick_csv(path: str | None) -> tuple[Any, Any]:
        # The file's own interval: a 5-minute CSV at the default 1m step would be 80 % gaps.
        if not path:
            return gr.update(), gr.update()
        try:
            inferred = infer_step(path)
        except OpenAnomalyError as error:
            raise gr.Error(str(error), print_exception=False) from None
        return inferred, inferred

    def clear() -> tuple[None, str, None, Any]:
        # Before every run, so a failed run leaves no chart or table of the previous one,
        # and the URL shown is the one this run queries (the file may have changed).
        return None, "Running…", None, current_url(playground)

    source.change(pick_source, source, [tsdb_group, csv_group])
    csv_file.upload(pick_csv, csv_file, [step, infer_every])
    range_choice.change(pick_range, range_choice, custom_row)
    pipeline.change(pick_pipeline, pipeline, [query, model, step, context, infer_every, q_low, q_high])
    # Not the URL textbox: a page built before the pipelines file changed would send
    # the old URL, which tsdb_settings refuses; "" means "the configured one, now".
    configured_tsdb = gr.State("")
    inputs = [
        source,
        pipeline,
        query,
        configured_tsdb,
        range_choice,
        start,
        end,
        csv_file,
        model,
        step,
        context,
        infer_every,
        q_low,
        q_high,
        max_series,
    ]
    outputs = [plot, summary, episodes]
    for event in (run.click, query.submit):
        event(clear, None, [*outputs, tsdb_url], queue=False).then(
            playground.handle, inputs, outputs, concurrency_limit=1
        )
    return pipeline, tsdb_url


def current_url(playground: Explorer) -> Any:
    """The TSDB URL to show now; unchanged while the file does not load (Run then says why)."""
    import gradio as gr

    try:
        return playground.default_url()
    except OpenAnomalyError:
        return gr.update()


def model_choices(current: str) -> list[str]:
    return list(MODEL_CHOICES) if current in MODEL_CHOICES else [current, *MODEL_CHOICES]
