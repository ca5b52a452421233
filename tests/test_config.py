import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from openanomaly.configstore.files import load_config
from openanomaly.core.config import CalibrationConfig, Pipeline, format_duration, parse_duration
from openanomaly.core.times import DURATION_MAX_CHARS, DURATION_PATTERN
from openanomaly.errors import ConfigValidationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800), ("250ms", 0.25), (90, 90)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "5", "5 minutes", "m5", "1h-3m", True, None, "78684705528y", 1e30, float("nan")]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@given(st.from_regex(DURATION_PATTERN, fullmatch=True).filter(lambda text: len(text) <= DURATION_MAX_CHARS))
def test_every_duration_the_schema_allows_parses(text):
    """The API schema (pattern and maxLength) and the parser agree: nothing valid overflows."""
    parse_duration(text)


@pytest.mark.parametrize("text", ["1234567s", "99999y99999y99999y", "5m" + " " * 15])
def test_durations_past_the_schema_are_refused(text):
    assert not (re.fullmatch(DURATION_PATTERN, text) and len(text) <= DURATION_MAX_CHARS)
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration_round_trips():
    for text in ("1d2h", "90s", "250ms", "1h30m"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


def test_pipeline_shorthand_model_and_context_points():
    pipeline = Pipeline.model_validate(
        {"name": "cpu", "query": "up", "model": "zscore", "step": "1m", "schedule": {"context": "2h"}}
    )
    assert pipeline.model.spec == "zscore"
    assert pipeline.context_points == 120
    assert pipeline.step_ms == 60_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "nope:x"}, "unknown model"),
        ({"model": "statsforecast:Prophet"}, "unknown model"),
        ({"query": "  "}, "must not be blank"),
        ({"step": "0s"}, "must be positive"),
        ({"scoring": {"quantiles": [0.6, 0.9]}}, "0 < low < 0.5 < high < 1"),
        ({"output": {"extra_labels": {"for": "x"}}}, "cannot be overridden"),
        ({"modle": "zscore"}, "Extra inputs are not permitted"),
    ],
)
def test_pipeline_rejects(change, message):
    raw = {"name": "cpu", "query": "up", "model": "zscore"} | change
    with pytest.raises(ValidationError, match=message):
        Pipeline.model_validate(raw)


def test_model_params_checked_at_load():
    with pytest.raises(ValidationError, match="season_length"):
        Pipeline.model_validate(
            {
                "name": "cpu",
                "query": "up",
                "model": {"spec": "statsforecast:SeasonalNaive", "params": {"season_length": 0}},
            }
        )
    for spec in ("chronos:/models/x", "statsforecast:AutoETS", "neuralforecast:NHITS", "default", "mad"):
        Pipeline.model_validate({"name": "cpu", "query": "up", "model": spec})
    with pytest.raises(ValidationError, match="MSTL needs season_length"):
        Pipeline.model_validate({"name": "cpu", "query": "up", "model": "statsforecast:MSTL"})


# ----------------------------------------------------------------------------- what a run would reject

SETTINGS = 'settings: {tsdb: {url: "http://127.0.0.1:1"}}\n'


def _problems(pipelines: str, env: dict[str, str] | None = None) -> dict[tuple[str | None, str | None], str]:
    """``(pipeline, field) -> message`` of every problem load_config finds."""
    with pytest.raises(ConfigValidationError) as info:
        load_config(SETTINGS + "pipelines:\n" + pipelines, source="p.yaml", env=env or {})
    problems = {(e.pipeline, e.field): str(e) for e in info.value.errors}
    assert all(message.startswith("p.yaml: ") and "\n" not in message for message in problems.values())
    return problems


@pytest.mark.parametrize(
    ("model", "quantiles", "ok"),
    [
        ("chronos:amazon/chronos-bolt-small", "[0.05, 0.95]", False),
        ("chronos:amazon/chronos-bolt-small", "[0.1, 0.9]", True),
        (
            "{spec: 'chronos:amazon/chronos-bolt-small', params: {tail_quantiles: normal}}",
            "[0.05, 0.95]",
            True,
        ),
        ("chronos:amazon/chronos-2", "[0.01, 0.99]", True),
        ("chronos:amazon/chronos-2", "[0.005, 0.99]", False),
        ("statsforecast:AutoETS", "[0.001, 0.999]", True),
    ],
)
def test_band_quantiles_the_model_can_forecast(model: str, quantiles: str, ok: bool) -> None:
    text = f"  - {{name: cpu, query: up, model: {model}, scoring: {{quantiles: {quantiles}}}}}\n"
    if ok:
        load_config(SETTINGS + "pipelines:\n" + text, env={})
        return
    message = _problems(text)[("cpu", "pipelines[0].scoring.quantiles")]
    assert "forecasts quantile levels" in message and "tail_quantiles" in message


def test_band_quantiles_of_a_local_checkpoint(tiny_chronos_bolt: str) -> None:
    text = f"  - {{name: cpu, query: up, model: 'chronos:{tiny_chronos_bolt}'}}\n"  # default band 0.05/0.95
    assert "0.1..0.9 only, not [0.05, 0.95]" in _problems(text)[("cpu", "pipelines[0].scoring.quantiles")]


@pytest.mark.parametrize(
    ("model", "context", "need"),
    [
        ("{spec: 'statsforecast:SeasonalNaive', params: {season_length: 1440}}", "1d", 1441),
        ("{spec: 'statsforecast:MSTL', params: {season_length: [60, 1440]}}", "1d", 2881),
        ("{spec: 'statsforecast:AutoETS', params: {season_length: 24}}", "30m", 49),
    ],
)
def test_context_too_short_for_the_season(model: str, context: str, need: int) -> None:
    text = f"  - {{name: cpu, query: up, model: {model}, schedule: {{context: {context}}}}}\n"
    message = _problems(text)[("cpu", "pipelines[0].schedule.context")]
    assert f"needs at least {need}" in message and "season_length" in message


def test_context_long_enough_for_the_season() -> None:
    """SeasonalNaive needs one season plus one point: the default 1h context (60 points) fits 59."""
    model = "{spec: 'statsforecast:SeasonalNaive', params: {season_length: 59}}"
    load_config(SETTINGS + f"pipelines:\n  - {{name: cpu, query: up, model: {model}}}\n", env={})
    assert (
        "needs at least 61"
        in _problems(f"  - {{name: cpu, query: up, model: {model.replace('59', '60')}}}\n")[
            ("cpu", "pipelines[0].schedule.context")
        ]
    )


@pytest.mark.parametrize(("params", "ok"), [("{}", False), ("{allow_long_horizon: true}", True)])
def test_horizon_the_model_forecasts(params: str, ok: bool) -> None:
    model = f"{{spec: 'chronos:amazon/chronos-bolt-small', params: {params}}}"
    text = (
        f"  - {{name: cpu, query: up, model: {model}, schedule: {{infer_every: 2h, context: 8h}},"
        " scoring: {quantiles: [0.1, 0.9]}}\n"
    )
    if ok:
        load_config(SETTINGS + "pipelines:\n" + text, env={})
        return
    message = _problems(text)[("cpu", "pipelines[0].schedule.infer_every")]
    assert "120 steps of 1m per forecast" in message and "at most 64" in message


@pytest.mark.parametrize(
    ("model", "known"),
    [
        ("default", "scoring.calibration"),
        ("mad", "window"),
        ("zscore", "window"),
        ("'statsforecast:AutoETS'", "season_length"),
        ("'chronos:amazon/chronos-bolt-small'", "tail_quantiles"),
        ("'neuralforecast:NHITS'", "max_steps"),
    ],
)
def test_misspelt_params_of_every_adapter(model: str, known: str) -> None:
    schedule = "{fit_every: 1h, fit_window: 2h}" if "NHITS" in model else "{}"
    model = f"{{spec: {model}, params: {{windw: 3}}}}"
    text = f"  - {{name: cpu, query: up, model: {model}, schedule: {schedule}}}\n"
    message = _problems(text)[("cpu", "pipelines[0].model.params")]
    assert "unknown params ['windw']" in message and known in message


@pytest.mark.parametrize(
    ("model", "schedule", "field", "message"),
    [
        ("'neuralforecast:NHITS'", "{}", "schedule.fit_every", "must be trained"),
        ("mad", "{fit_every: 1h, fit_window: 2h}", "schedule.fit_every", "zero-shot"),
        (
            "{spec: 'statsforecast:SeasonalNaive', params: {season_length: 6}}",
            "{fit_every: 1h, fit_window: 2h}",
            "schedule.fit_every",
            "no fitted form",
        ),
        ("'statsforecast:AutoETS'", "{fit_every: 1h}", "schedule.fit_window", "at least as long"),
        (
            "{spec: 'statsforecast:AutoETS', params: {season_length: 60}}",
            "{fit_every: 1h, fit_window: 1h}",
            "schedule.fit_window",
            "needs at least 120",
        ),
    ],
)
def test_fit_schedule_fits_the_model(model: str, schedule: str, field: str, message: str) -> None:
    text = f"  - {{name: cpu, query: up, model: {model}, schedule: {schedule}}}\n"
    assert message in _problems(text)[("cpu", f"pipelines[0].{field}")]


def test_unset_variable_is_listed_with_every_other_problem() -> None:
    text = (
        'settings: {tsdb: {url: "${VM_URL}", bearer_token: "${VM_TOKEN:-}"}}\n'
        "pipelines:\n"
        "  - {name: cpu, query: up, model: 'chronos:amazon/chronos-bolt-small'}\n"
        "  - {name: mem, query: '${QUERY}', model: mad, step: 0s}\n"
        "  - {name: disk, query: up, model: {spec: default, params: {histroy: 3}}}\n"
    )
    with pytest.raises(ConfigValidationError) as info:
        load_config(text, source="p.yaml", env={})
    problems = {(e.pipeline, e.field): str(e) for e in info.value.errors}
    assert set(problems) == {
        (None, "settings.tsdb.url"),
        ("cpu", "pipelines[0].scoring.quantiles"),
        ("mem", "pipelines[1].query"),
        ("mem", "pipelines[1].step"),
        ("disk", "pipelines[2].model.params"),
    }
    assert "environment variable 'QUERY' is not set" in problems[("mem", "pipelines[1].query")]


def test_unset_variable_in_a_checked_field_hides_that_field_s_own_error() -> None:
    text = 'settings: {tsdb: {url: "${VM_URL}"}}\npipelines: [{name: a, query: up, model: mad}]'
    with pytest.raises(ConfigValidationError) as info:
        load_config(text, env={})
    assert [(e.field, "VM_URL" in str(e)) for e in info.value.errors] == [("settings.tsdb.url", True)]


@pytest.mark.parametrize(
    ("raw", "accepted"),
    [("3", 3.0), ("0.5", 0.5), ("1e1", 10.0), ("true", None), ('"3"', None), ("0", None), ("-1", None)],
)
def test_the_false_alarm_budget_is_a_positive_number(raw: str, accepted: float | None) -> None:
    """A boolean or text is a mistake, not 1; no budget (0) would never alert."""
    if accepted is None:
        with pytest.raises(ValidationError):
            CalibrationConfig.model_validate_json(f'{{"false_alarms_per_week": {raw}}}')
    else:
        config = CalibrationConfig.model_validate_json(f'{{"false_alarms_per_week": {raw}}}')
        assert config.false_alarms_per_week == accepted


def test_the_alert_policy_takes_durations_and_refuses_the_old_knobs() -> None:
    config = CalibrationConfig.model_validate({"cooldown": "2h", "min_history": "3d"})
    policy = config.policy()
    assert (policy.cooldown_s, policy.min_history_s) == (7200, 3 * 86400)
    with pytest.raises(ValidationError, match="invalid duration"):
        CalibrationConfig.model_validate({"cooldown": "-1h"})
    with pytest.raises(ValidationError, match="gain"):
        CalibrationConfig.model_validate({"gain": 1.88})
