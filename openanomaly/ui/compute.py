"""What the playground computes, without Gradio: form values in, scores, table and chart out.

The layout (:mod:`openanomaly.ui.app`) only collects form values and shows what these
functions return, so everything here is testable with plain calls. Scores come from the
production window path: :func:`openanomaly.runtime.window.fetch` (``query_range``, checked) and
:func:`openanomaly.core.detect.score_range`, exactly what ``openanomaly backtest`` and the
scheduler compute, so a picture in the playground is what a scheduled run would have written.

Errors are :class:`~openanomaly.errors.OpenAnomalyError` subclasses whose messages a
person can read (the UI shows them as they are): a bad form field is a
:class:`PlaygroundInputError` naming the field.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from openanomaly.core.config import Pipeline, Schedule, parse_duration
from openanomaly.core.detect import Detection, score_range
from openanomaly.core.series import format_labels
from openanomaly.core.times import format_iso, parse_time
from openanomaly.errors import OpenAnomalyError, PlaygroundInputError
from openanomaly.io.csvseries import read_csv_series
from openanomaly.runtime.window import fetch, scored_range

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

    from openanomaly.models.base import Forecaster
    from openanomaly.runtime.window import TSDBClient

__all__ = [
    "AD_HOC_FORM",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_MAX_SERIES",
    "MODEL_CHOICES",
    "RANGE_CHOICES",
    "PlaygroundInputError",
    "PlaygroundResult",
    "build_pipeline",
    "chart_json",
    "infer_step",
    "load_model",
    "make_chart",
    "resolve_range",
    "run_csv",
    "run_query",
]

DEFAULT_MAX_SERIES = 6
"""Series drawn by default; the rest are counted and named as hidden (charts stay readable)."""

DEFAULT_MAX_POINTS = 20_000
"""Grid points per series the playground scores at most (a chart past this is unusable and slow)."""

RANGE_CHOICES = ("last 1h", "last 6h", "last 1d", "last 7d", "custom")
"""Time-range presets; ``custom`` reads the start/end fields."""

MODEL_CHOICES = (
    "default",
    "mad",
    "zscore",
    "statsforecast:AutoETS",
    "statsforecast:AutoARIMA",
    "statsforecast:MSTL",
    "statsforecast:SeasonalNaive",
)
"""Specs offered in the model picker; the configured pipelines' models run too, nothing else."""

_AD_HOC = "playground"

AD_HOC_FORM: Mapping[str, Any] = {
    "query": "",
    "model": "default",
    "step": "1m",
    "context": "5d",
    "infer_every": "1m",
    "q_low": 0.05,
    "q_high": 0.95,
}
"""Form values when no configured pipeline is picked: the same 5 days of context as
``openanomaly example`` (``examples/example.yaml``), so the two agree on the same data. The
calibration stage's residual record is half the context and its daily profile needs two
past days, so the config's 1h default would leave it guessing. A CSV upload replaces the
step with the file's own (:func:`infer_step`)."""


@dataclass(frozen=True)
class PlaygroundResult:
    """One playground run: the production :class:`Detection` plus what the page shows.

    Attributes:
        pipeline: the pipeline that was scored (form values applied).
        detection: scores for ALL series the query returned, over ``(start_ms, end_ms]``.
        shown: row indices of ``detection`` that are drawn (the most anomalous first).
        hidden: labels of series not drawn (more than ``max_series``).
        episodes: one row per run of consecutive points with score > 1, over all series
            (columns ``start``, ``end``, ``points``, ``max_score``, ``peak_value``, ``series``),
            highest ``max_score`` first.
        start_ms, end_ms: the scored range.
    """

    pipeline: Pipeline
    detection: Detection
    shown: tuple[int, ...]
    hidden: tuple[Mapping[str, str], ...]
    episodes: pd.DataFrame
    start_ms: int
    end_ms: int

    @property
    def anomalies(self) -> int:
        """Points with score > 1 over all series."""
        with np.errstate(invalid="ignore"):
            return int(np.count_nonzero(self.detection.anomaly_score > 1))

    def summary(self) -> str:
        """A few Markdown lines: range, model, counts, hidden and skipped series."""
        detection = self.detection
        lines = [
            f"**{self.pipeline.name}** · model `{self.pipeline.model.label}` · "
            f"({_iso(self.start_ms)}, {_iso(self.end_ms)}] · step {_duration(self.pipeline.step)} · "
            f"context {_duration(self.pipeline.schedule.context)}",
            f"{detection.series_scored}/{len(detection.labels)} series scored, "
            f"{detection.points_scored} points, **{self.anomalies} anomalous** (score > 1), "
            f"{len(self.episodes)} episodes.",
        ]
        if self.hidden:
            names = ", ".join(f"`{format_labels(labels)}`" for labels in self.hidden[:5])
            more = f" and {len(self.hidden) - 5} more" if len(self.hidden) > 5 else ""
            lines.append(
                f"Showing {len(self.shown)} of {len(detection.labels)} series (most anomalous first); "
                f"{len(self.hidden)} hidden: {names}{more}."
            )
        warm_up = detection.points_in - detection.points_scored
        if warm_up > 0:
            lines.append(
                f"{warm_up} points not scored: warm-up (their residual record spans less than "
                f"`scoring.calibration.min_history`) or no context before them."
            )
        if detection.skipped:
            names = ", ".join(f"`{format_labels(labels)}`" for labels in detection.skipped_labels[:5])
            lines.append(f"Not fully scored (no finite context before some points): {names}.")
        return "\n\n".join(lines)

    def frame(self, row: int) -> pd.DataFrame:
        """One series as a table: ``time`` (UTC), ``value``, ``yhat``, ``yhat_lower``,
        ``yhat_upper``, ``score``, ``anomalous`` (score > 1)."""
        import pandas as pd

        d = self.detection
        score = d.anomaly_score[row]
        with np.errstate(invalid="ignore"):
            anomalous = score > 1
        return pd.DataFrame(
            {
                "time": pd.to_datetime(d.timestamps, unit="ms", utc=True),
                "value": d.actual[row],
                "yhat": d.yhat[row],
                "yhat_lower": d.yhat_lower[row],
                "yhat_upper": d.yhat_upper[row],
                "score": score,
                "anomalous": anomalous,
            }
        )


# ----------------------------------------------------------------------------- form → inputs


def _duration(value: Any) -> str:
    from openanomaly.core.config import format_duration

    return format_duration(value)


def _iso(ms: int) -> str:
    return format_iso(ms, sep=" ")


def _check_duration(text: str, *, field: str) -> str:
    try:
        if parse_duration(text).total_seconds() <= 0:
            raise ValueError(f"must be positive, got {text!r}")
    except ValueError as error:
        raise PlaygroundInputError(str(error), field=field) from None
    return text.strip()


def build_pipeline(
    *,
    base: Pipeline | None = None,
    query: str,
    model: str,
    step: str = "",
    context: str = "",
    infer_every: str = "",
    quantiles: tuple[float, float] | None = None,
) -> Pipeline:
    """The pipeline a playground run scores: ``base`` (a configured pipeline) with the form's values.

    Empty strings and ``None`` keep ``base``'s value (or the config defaults when there
    is no base). Model params of ``base`` are kept only while the spec is unchanged: a
    different model gets its defaults, since params are model-specific.

    Raises:
        PlaygroundInputError: a field is invalid, naming the field (``Query``, ``Model``,
            ``Step``, ``Context``, ``Forecast every``, ``Band quantiles``).
    """
    query = (query or "").strip()
    if not query:
        raise PlaygroundInputError("enter a PromQL query (or pick a pipeline)", field="Query")
    model = (model or "").strip()
    if not model:
        raise PlaygroundInputError("pick or type a model spec, e.g. 'default'", field="Model")
    raw: dict[str, Any] = base.model_dump() if base is not None else {"name": _AD_HOC}
    raw["query"] = query
    if base is None or model != base.model.spec:
        raw["model"] = {"spec": model}
    schedule = dict(raw.get("schedule") or {})
    if step.strip():
        raw["step"] = _check_duration(step, field="Step")
    if context.strip():
        schedule["context"] = _check_duration(context, field="Context")
    if infer_every.strip():
        schedule["infer_every"] = _check_duration(infer_every, field="Forecast every")
    elif step.strip():
        # A new step the kept forecast cadence does not fit (1m cadence, 5m CSV): forecast
        # every point, the finest cadence the grid allows, rather than refuse the form.
        every = parse_duration(schedule.get("infer_every") or Schedule().infer_every)
        if every % parse_duration(raw["step"]):
            schedule["infer_every"] = raw["step"]
    raw["schedule"] = schedule
    if quantiles is not None:
        raw["scoring"] = dict(raw.get("scoring") or {}) | {"quantiles": [float(q) for q in quantiles]}
    try:
        return Pipeline.model_validate(raw)
    except ValidationError as error:
        problem = error.errors()[0]
        field = {
            "model": "Model",
            "step": "Step",
            "schedule": "Context",
            "scoring": "Band quantiles",
            "query": "Query",
        }.get(str(problem["loc"][0]) if problem["loc"] else "", "Pipeline")
        message = problem["msg"].removeprefix("Value error, ")
        if field == "Pipeline" and "schedule.context" in message:  # the step/context cross-check
            field = "Context"
        elif field == "Pipeline" and "schedule.infer_every" in message:  # the step/cadence cross-check
            field = "Forecast every"
        raise PlaygroundInputError(message, field=field) from None


def resolve_range(choice: str, *, start: str = "", end: str = "", now_ms: int) -> tuple[int, int]:
    """``(start_ms, end_ms)`` for a preset (``last 6h``…) or ``custom`` with start/end text.

    Custom times are ISO 8601, unix seconds, ``now`` or ``now-<duration>`` (as the CLI).

    Raises:
        PlaygroundInputError: unknown preset, unparsable time, or end not after start.
    """
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    if choice != "custom":
        if not choice.startswith("last "):
            raise PlaygroundInputError(
                f"unknown range {choice!r}; use one of {', '.join(RANGE_CHOICES)}", field="Range"
            )
        span = parse_duration(choice.removeprefix("last "))
        return now_ms - round(span.total_seconds() * 1000), now_ms
    bounds = []
    for field, text in (("Start", start), ("End", end)):
        try:
            bounds.append(parse_time(text or "now", now=now))
        except OpenAnomalyError as error:
            raise PlaygroundInputError(str(error), field=field) from None
    if bounds[1] <= bounds[0]:
        raise PlaygroundInputError(f"{end!r} is not after start {start!r}", field="End")
    return bounds[0], bounds[1]


@functools.lru_cache(maxsize=4)
def _cached_model(spec: str, params_json: str) -> Forecaster:
    from openanomaly.models.registry import load_forecaster

    return load_forecaster(spec, **json.loads(params_json))


def load_model(pipeline: Pipeline) -> Forecaster:
    """The pipeline's forecaster; the last few are kept loaded (Chronos loads take seconds).

    Raises:
        UnknownModelSpec, ModelError: as :func:`openanomaly.models.registry.load_forecaster`.
    """
    params = json.dumps(pipeline.model.params, sort_keys=True, default=str)
    return _cached_model(pipeline.model.spec, params)


def infer_step(path: str | Path) -> str:
    """The sampling interval of a ``timestamp,value`` CSV: the median spacing of its
    timestamps, as a duration string (``5m``). Gaps and jitter do not change the median.

    Raises:
        PlaygroundInputError: unreadable file, wrong columns, or fewer than two timestamps.
    """
    import pandas as pd

    from openanomaly.core.config import format_duration

    path = Path(path)
    try:
        stamps = pd.to_datetime(pd.read_csv(path, usecols=["timestamp"])["timestamp"], utc=True)
    except (OSError, ValueError) as error:
        message = f"cannot read timestamps from {path.name!r}: {error}"
        raise PlaygroundInputError(message, field="CSV file") from None
    spacing = np.diff(np.unique(stamps.dt.as_unit("ms").astype("int64").to_numpy()))
    if spacing.size == 0:
        raise PlaygroundInputError(f"{path.name!r} needs at least two timestamps", field="CSV file")
    return format_duration(timedelta(milliseconds=int(np.median(spacing))))


# ----------------------------------------------------------------------------- runs


def run_query(
    client: TSDBClient,
    pipeline: Pipeline,
    *,
    start_ms: int,
    end_ms: int,
    forecaster: Forecaster | None = None,
    max_series: int = DEFAULT_MAX_SERIES,
    max_points: int = DEFAULT_MAX_POINTS,
) -> PlaygroundResult:
    """Fetch the pipeline's query over ``(start_ms - context, end_ms]`` and backtest ``(start_ms, end_ms]``.

    Times are aligned down to the step grid, as the CLI's backtest does. Nothing is
    written to the TSDB.

    Args:
        forecaster: default :func:`load_model` of the pipeline.
        max_series: series drawn; the rest are listed in :attr:`PlaygroundResult.hidden`.
        max_points: refuse ranges with more grid points than this per series.

    Raises:
        PlaygroundInputError: the range has more than ``max_points`` points.
        QueryError: bad PromQL or unreachable TSDB (the message says which, with the URL).
        DataError: the query returned no series or only NaN.
        ModelError: the model failed to load or to forecast.
    """
    step = pipeline.step_ms
    start_ms, end_ms = start_ms // step * step, end_ms // step * step
    points = (end_ms - start_ms) // step
    if points <= 0:
        raise PlaygroundInputError(
            f"the range is shorter than one step ({_duration(pipeline.step)})", field="Range"
        )
    if points > max_points:
        raise PlaygroundInputError(
            f"{points} points per series at step {_duration(pipeline.step)}; at most {max_points}: "
            "use a larger step or a shorter range",
            field="Range",
        )
    series = fetch(client, pipeline, start_ms=start_ms, end_ms=end_ms)
    forecaster = forecaster if forecaster is not None else load_model(pipeline)
    detection = score_range(series, pipeline, forecaster, start_ms=start_ms, end_ms=end_ms, checked=True)
    return _result(pipeline, detection, start_ms=start_ms, end_ms=end_ms, max_series=max_series)


def run_csv(
    path: str | Path,
    pipeline: Pipeline,
    *,
    forecaster: Forecaster | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> PlaygroundResult:
    """Backtest a ``timestamp,value`` CSV (the NAB layout) with no TSDB.

    The series is put on the pipeline's step grid (missing points are NaN); the first
    ``context`` of it is only context, everything after is scored.

    Raises:
        PlaygroundInputError: the file is unreadable, has the wrong columns, or is shorter
            than the context plus one step, or longer than ``max_points``.
        DataError, ModelError: as :func:`run_query`.
    """
    path = Path(path)
    try:
        series = read_csv_series(path, step_ms=pipeline.step_ms, name="value")
    except OpenAnomalyError as error:
        raise PlaygroundInputError(str(error), field="CSV file") from None
    if len(series.timestamps) == 0:
        raise PlaygroundInputError(f"{path.name!r} has no rows", field="CSV file")
    step = pipeline.step_ms
    try:
        start_ms, end_ms = scored_range(series, pipeline)
    except OpenAnomalyError:
        raise PlaygroundInputError(
            f"{path.name!r} spans {len(series.timestamps)} points at step {_duration(pipeline.step)}; "
            f"it needs more than the context ({pipeline.context_points} points): "
            "shorten Context or Step",
            field="CSV file",
        ) from None
    points = (end_ms - start_ms) // step
    if points > max_points:
        raise PlaygroundInputError(
            f"{path.name!r} has {points} points to score at step {_duration(pipeline.step)}; "
            f"at most {max_points}: use a larger step",
            field="CSV file",
        )
    forecaster = forecaster if forecaster is not None else load_model(pipeline)
    detection = score_range(series, pipeline, forecaster, start_ms=start_ms, end_ms=end_ms)
    return _result(pipeline, detection, start_ms=start_ms, end_ms=end_ms, max_series=1)


def _result(
    pipeline: Pipeline, detection: Detection, *, start_ms: int, end_ms: int, max_series: int
) -> PlaygroundResult:
    if max_series <= 0:
        raise ValueError(f"max_series must be positive, got {max_series}")
    with np.errstate(invalid="ignore"):
        peak = np.nanmax(
            np.where(np.isfinite(detection.anomaly_score), detection.anomaly_score, -np.inf), axis=1
        )
    # Most anomalous first; ties (and unscored series) keep the query's label order.
    order = np.argsort(-peak, kind="stable") if len(peak) else np.empty(0, np.int64)
    shown = tuple(int(i) for i in order[:max_series])
    hidden = tuple(detection.labels[int(i)] for i in order[max_series:])
    return PlaygroundResult(
        pipeline=pipeline,
        detection=detection,
        shown=shown,
        hidden=hidden,
        episodes=_episodes(detection, step_ms=pipeline.step_ms),
        start_ms=start_ms,
        end_ms=end_ms,
    )


def _episodes(detection: Detection, *, step_ms: int) -> pd.DataFrame:
    import pandas as pd

    from openanomaly.core.episodes import EpisodeCollector, by_peak

    collector = EpisodeCollector(pipeline=_AD_HOC, step_ms=step_ms)
    collector.add(detection)
    episodes = by_peak(collector.episodes)
    return pd.DataFrame(
        {
            "start": [_iso(e.start_ms) for e in episodes],
            "end": [_iso(e.end_ms) for e in episodes],
            "points": [e.points for e in episodes],
            "max_score": [round(e.max_score, 3) for e in episodes],
            "peak_value": [float(f"{e.peak_value:.6g}") for e in episodes],
            "series": [e.series for e in episodes],
        },
        columns=["start", "end", "points", "max_score", "peak_value", "series"],
    )


# ----------------------------------------------------------------------------- charts

_COLORS = {
    "actual": "#1f2933",
    "yhat": "#2f6fb0",
    "band": "#8fb8e8",
    "anomaly": "#d62728",
    "score": "#e4572e",
}


def _series_chart(result: PlaygroundResult, row: int, *, width: int) -> alt.VConcatChart:
    import altair as alt

    lo, hi = result.pipeline.scoring.quantiles
    band_name = f"band q{lo:g}..q{hi:g}"
    anomaly_name = "anomaly (score > 1)"
    legend = alt.Color(
        "kind:N",
        scale=alt.Scale(
            domain=["actual", "yhat", band_name, anomaly_name],
            range=[_COLORS["actual"], _COLORS["yhat"], _COLORS["band"], _COLORS["anomaly"]],
        ),
        legend=alt.Legend(title=None, orient="top", direction="horizontal"),
    )
    tooltip = [
        alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S"),
        alt.Tooltip("value:Q", format=".4g"),
        alt.Tooltip("yhat:Q", format=".4g"),
        alt.Tooltip("yhat_lower:Q", format=".4g"),
        alt.Tooltip("yhat_upper:Q", format=".4g"),
        alt.Tooltip("score:Q", format=".3f"),
    ]
    stamps = result.detection.timestamps
    span_ms = int(stamps[-1] - stamps[0]) if len(stamps) else 0
    time_format = "%H:%M" if span_ms <= 86_400_000 else "%b %d %H:%M"
    x = alt.X("time:T", title=None, axis=alt.Axis(format=time_format, labelOverlap=True))
    base = alt.Chart(result.frame(row)).encode(x=x)

    def kind(chart: alt.Chart, name: str) -> alt.Chart:
        # A constant per layer so that the layers share one colour legend.
        return chart.transform_calculate(kind=f"{name!r}").encode(color=legend)

    band = kind(base.mark_area(opacity=0.45), band_name).encode(
        y=alt.Y("yhat_lower:Q", title="value", scale=alt.Scale(zero=False)), y2="yhat_upper:Q"
    )
    yhat = kind(base.mark_line(strokeDash=[5, 3], strokeWidth=1.5), "yhat").encode(y="yhat:Q")
    actual = kind(base.mark_line(strokeWidth=1.5), "actual").encode(y="value:Q", tooltip=tooltip)
    flagged = base.transform_filter(alt.datum.anomalous)
    points = kind(flagged.mark_point(filled=True, size=60, opacity=1), anomaly_name).encode(
        y="value:Q", tooltip=tooltip
    )
    top = (
        alt.layer(band, yhat, actual, points)
        .properties(width=width, height=230, title=format_labels(result.detection.labels[row]))
        .add_params(alt.selection_interval(bind="scales", encodings=["x"], name=f"zoom_{row}"))
    )
    score_line = base.mark_line(color=_COLORS["score"], strokeWidth=1.2).encode(
        y=alt.Y("score:Q", title="anomaly score"), tooltip=tooltip
    )
    threshold = alt.Chart().mark_rule(strokeDash=[2, 2], color="#777").encode(y=alt.datum(1))
    score_points = flagged.mark_point(filled=True, size=30, color=_COLORS["anomaly"]).encode(y="score:Q")
    bottom = alt.layer(score_line, threshold, score_points).properties(width=width, height=110)
    return alt.vconcat(top, bottom, spacing=4)


def make_chart(result: PlaygroundResult, *, width: int = 820) -> alt.VConcatChart:
    """One panel pair per shown series: values with the shaded ``[yhat_lower, yhat_upper]``
    band, dashed ``yhat`` and red anomalous points, and below it the anomaly score with
    the threshold at 1. Each panel zooms and pans along time (drag, scroll).

    Returns an Altair chart (render with ``gr.Plot``, or ``.save("x.html")``).
    """
    import altair as alt

    if not result.shown:
        raise ValueError("the result has no series to draw")
    charts = [_series_chart(result, row, width=width) for row in result.shown]
    return alt.vconcat(*charts, spacing=18).resolve_scale(color="independent")


def chart_json(chart: alt.TopLevelMixin) -> str:
    """The chart's Vega-Lite JSON with no row limit (Altair refuses > 5000 rows by default;
    the playground bounds points with ``max_points`` instead).

    It asks vega-embed for the SVG renderer (``usermeta.embedOptions``): each mark is then
    an element with an ``aria-label`` naming its time and value, which screen readers and
    the real-browser test (``tests/test_ui_browser.py``) can read; a canvas is opaque.
    """
    import altair as alt

    with alt.data_transformers.disable_max_rows():
        return chart.properties(usermeta={"embedOptions": {"renderer": "svg"}}).to_json()
