from datetime import timedelta

import pytest
from pydantic import ValidationError

from openanomaly.config import Pipeline, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800), ("250ms", 0.25), (90, 90)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "m5", "1h-3m", True, None])
def test_parse_duration_rejects(text):
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
