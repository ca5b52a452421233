import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from openanomaly.core.config import Pipeline
from openanomaly.core.detect import align_to_grid, default_batch_chunks, score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import DataError, ModelError
from openanomaly.models.base import QuantileForecast
from openanomaly.models.registry import load_forecaster
from openanomaly.runtime.window import output_labels, output_matrix

STEP = 60_000


class LastValue:
    """Forecasts the context's last finite value, band ±1; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, int, list[float]]] = []

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        self.calls.append((contexts.copy(), horizon, list(quantiles)))
        last = np.array([row[np.isfinite(row)][-1] for row in contexts])
        median = np.repeat(last[:, None], horizon, axis=1)
        levels = np.asarray(quantiles, dtype=float)
        offsets = np.where(levels < 0.5, -1.0, np.where(levels > 0.5, 1.0, 0.0))
        return QuantileForecast(median[:, :, None] + offsets, levels, median)


class WrongRows(LastValue):
    def forecast(self, contexts, horizon, quantiles):
        result = super().forecast(contexts, horizon, quantiles)
        return QuantileForecast(result.quantiles[:-1], result.levels, result.median[:-1])


def pipeline(**overrides) -> Pipeline:
    raw = {
        "name": "p",
        "query": "m",
        "step": "1m",
        "model": {"spec": "mad", "alias": "robust"},
        "schedule": {"infer_every": "3m", "context": "5m"},
    }
    return Pipeline.model_validate(raw | overrides)


def matrix(values, labels=None, t0=0) -> SeriesMatrix:
    values = np.atleast_2d(np.asarray(values, dtype=float))
    labels = labels or [{"__name__": "m", "i": str(i)} for i in range(len(values))]
    return SeriesMatrix.from_rows(labels, t0 + STEP * np.arange(values.shape[1]), values)


def test_chunks_and_batch_defaults():
    assert pipeline().chunk_points == 3
    assert pipeline(schedule={"infer_every": "1m", "context": "5m"}).chunk_points == 1
    with pytest.raises(ValueError, match="whole multiple of step"):
        pipeline(schedule={"infer_every": "30s", "context": "5m"})
    assert default_batch_chunks(pipeline(), 1) > 1000
    assert default_batch_chunks(pipeline(schedule={"context": "1000d"}), 10_000) == 1


def test_rolling_forecast_has_no_look_ahead():
    series = matrix([np.arange(20.0)])
    model = LastValue()
    raw_band = pipeline(scoring={"calibration": {"enabled": False}})  # the model's own band
    result = score_range(series, raw_band, model, start_ms=9 * STEP, end_ms=19 * STEP)
    # window (9, 19] → columns 10..19, chunks [10,11,12] [13,14,15] [16,17,18] [19]
    assert result.timestamps.tolist() == (STEP * np.arange(10, 20)).tolist()
    assert result.yhat[0].tolist() == [9, 9, 9, 12, 12, 12, 15, 15, 15, 18]
    assert result.yhat_lower[0].tolist() == [8, 8, 8, 11, 11, 11, 14, 14, 14, 17]
    assert result.actual[0].tolist() == list(range(10, 20))
    # one batched call for all chunks, contexts are the 5 points before each chunk
    assert len(model.calls) == 1
    contexts, horizon, quantiles = model.calls[0]
    assert horizon == 3
    assert quantiles == [0.05, 0.5, 0.95]
    assert contexts.tolist() == [
        [5, 6, 7, 8, 9],
        [8, 9, 10, 11, 12],
        [11, 12, 13, 14, 15],
        [14, 15, 16, 17, 18],
    ]
    # actual - yhat = 1, 2, 3 with band ±1 → 1 (edge), 2, 3 band widths of 2: 1.5, 2.0
    assert result.anomaly_score[0, :3].tolist() == [1.0, 1.5, 2.0]
    assert result.points_scored == 10 and result.series_scored == 1 and result.skipped == ()


def test_short_history_is_left_padded_with_nan():
    model = LastValue()
    # the window (3, 6] (infer_every 3m) forecasts from columns -1..3: one before the data
    score_range(matrix([np.arange(7.0)]), pipeline(), model, start_ms=3 * STEP, end_ms=6 * STEP)
    contexts = model.calls[0][0]
    assert np.isnan(contexts[0, :1]).all()
    assert contexts[0, 1:].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_batches_match_one_forecast_call():
    rng = np.random.default_rng(0)
    series = matrix(rng.normal(size=(3, 200)).cumsum(axis=1))
    p = pipeline(schedule={"infer_every": "4m", "context": "30m"})
    model = load_forecaster("mad")
    whole = score_range(series, p, model, start_ms=40 * STEP, end_ms=199 * STEP, batch_chunks=10_000)
    seen: list[tuple[int, int]] = []
    batched = score_range(
        series,
        p,
        model,
        start_ms=40 * STEP,
        end_ms=199 * STEP,
        batch_chunks=3,
        progress=lambda d, t: seen.append((d, t)),
    )
    for name in ("anomaly_score", "yhat", "yhat_lower", "yhat_upper"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(batched, name))
    assert seen[-1] == (159, 159)
    assert len(seen) == -(-159 // 12)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(seen))


@pytest.mark.parametrize("start", [40, 41, 42, 43, 57])
def test_a_point_gets_the_same_scores_whatever_range_scores_it(start):
    """Chunks sit on the absolute infer_every grid: a range that starts mid-window scores
    its points exactly as the scheduler's whole window does (same context, same chunk)."""
    rng = np.random.default_rng(1)
    series = matrix(rng.normal(size=(2, 120)).cumsum(axis=1))
    p = pipeline(schedule={"infer_every": "4m", "context": "30m"})
    model = load_forecaster("mad")
    windows = [
        score_range(series, p, model, start_ms=k * STEP, end_ms=(k + 4) * STEP) for k in range(40, 116, 4)
    ]
    scheduled = np.concatenate([w.yhat for w in windows], axis=1)  # points 41..116
    part = score_range(series, p, model, start_ms=start * STEP, end_ms=101 * STEP, batch_chunks=2)
    np.testing.assert_array_equal(part.yhat, scheduled[:, start - 40 : 101 - 40])
    assert part.timestamps[0] == (start + 1) * STEP


def test_nan_actuals_are_not_scored_and_chunks_without_context_are_skipped():
    values = np.arange(30.0).reshape(2, 15)
    values[0, 11] = np.nan  # a gap in series 0
    values[1, :13] = np.nan  # series 1 starts inside the window: its chunk has no context
    model = LastValue()
    # A 5-point context holds no residual record: the model's own band scores here.
    raw = pipeline(scoring={"calibration": {"enabled": False}})
    result = score_range(matrix(values), raw, model, start_ms=9 * STEP, end_ms=14 * STEP)
    assert np.isnan(result.anomaly_score[0, 1]) and np.isnan(result.yhat[0, 1])
    assert np.isfinite(result.anomaly_score[0, [0, 2, 3, 4]]).all()
    # series 1: chunk [10,11,12] has no context and no actuals → not forecast, not skipped;
    # chunk [13,14,15] has context 8..12, all NaN → skipped
    assert result.skipped == (1,)
    assert result.skipped_labels == ({"__name__": "m", "i": "1"},)
    assert np.isnan(result.anomaly_score[1]).all()
    assert result.series_scored == 1
    assert model.calls[0][0].shape == (2, 5)  # only series 0's two chunks were forecast


def test_output_matrix_labels_and_rows():
    values = np.array([np.arange(10.0), np.full(10, np.nan)])
    values[1, 0] = 1.0  # finite only in the context: no output rows for series 1
    p = pipeline(
        output={"anomaly_score": "score", "extra_labels": {"team": "sre"}},
        scoring={"calibration": {"enabled": False}},  # 5 points of context hold no record
    )
    labels = [{"__name__": "cpu", "host": "a", "model": "x"}, {"__name__": "cpu", "host": "b"}]
    out = output_matrix(
        score_range(matrix(values, labels), p, LastValue(), start_ms=6 * STEP, end_ms=9 * STEP), p
    )
    assert [dict(lab) for lab in out.labels] == [
        {"host": "a", "model": "robust", "team": "sre", "for": "p", "__name__": name}
        for name in ("score", "yhat", "yhat_lower", "yhat_upper")
    ]
    assert out.timestamps.tolist() == [7 * STEP, 8 * STEP, 9 * STEP]
    assert out.values[1].tolist() == [6.0, 6.0, 6.0]
    assert output_labels({"__name__": "x"}, p, metric="yhat")["__name__"] == "yhat"


def test_empty_window_gives_empty_output():
    result = score_range(
        matrix([np.arange(5.0)]), pipeline(), LastValue(), start_ms=4 * STEP, end_ms=4 * STEP
    )
    assert result.anomaly_score.shape == (1, 0)
    assert len(output_matrix(result, pipeline())) == 0


@pytest.mark.parametrize(
    ("series", "message"),
    [
        (SeriesMatrix.empty(), "returned no series"),
        (matrix([[np.nan] * 6, [np.nan] * 6]), r"all 2 series .* \(all NaN\)"),
        (SeriesMatrix.from_rows([{"a": "1"}], [0, STEP, 3 * STEP], [[1.0, 2.0, 3.0]]), "regular grid"),
        (
            matrix([[1.0] * 6, [2.0] * 6], [{"__name__": "a"}, {"__name__": "b"}]),
            "differ only in their metric",
        ),
    ],
)
def test_data_errors(series, message):
    with pytest.raises(DataError, match=message) as info:
        score_range(series, pipeline(), LastValue(), start_ms=0, end_ms=5 * STEP)
    assert info.value.pipeline == "p"


def test_broken_forecaster_is_a_model_error():
    with pytest.raises(ModelError, match="shape"):
        score_range(
            matrix([np.arange(10.0)] * 1), pipeline(), WrongRows(), start_ms=5 * STEP, end_ms=9 * STEP
        )


def test_backtest_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_chunks"):
        score_range(
            matrix([np.arange(5.0)]), pipeline(), LastValue(), start_ms=0, end_ms=STEP, batch_chunks=0
        )


def test_align_to_grid():
    raw = SeriesMatrix.from_rows([{"a": "1"}], [1_000, 60_000, 200_000], [[1.0, 2.0, 3.0]])
    grid = align_to_grid(raw, step_ms=STEP, start_ms=0)
    assert grid.timestamps.tolist() == [0, 60_000, 120_000, 180_000, 240_000]
    np.testing.assert_array_equal(grid.values, [[np.nan, 2.0, np.nan, np.nan, 3.0]])
    # the 1 000 ms sample lands on 60 000, then is overwritten by the exact 60 000 one


def test_a_window_checks_its_input_once(monkeypatch):
    """fetch checks the block; the scorer it goes to does not check it again."""
    import openanomaly.core.detect as detect_module
    import openanomaly.runtime.window as window_module
    from openanomaly.runtime.window import local_scorer, run_window

    calls = []
    real = detect_module.check_input

    def counted(series, pipeline):
        calls.append(len(series))
        real(series, pipeline)

    monkeypatch.setattr(detect_module, "check_input", counted)
    monkeypatch.setattr(window_module, "check_input", counted)

    class Source:
        def query_range(self, query, *, start_ms, end_ms, step_ms):
            return matrix([np.arange(40.0), np.arange(40.0) * 2])

    p = pipeline(scoring={"calibration": {"enabled": False}})  # no warm-up: every point scores
    detection, result = run_window(
        p, local_scorer(p, LastValue()), start_ms=30 * STEP, end_ms=33 * STEP, source=Source(), sink=None
    )
    assert calls == [2]
    assert result.points_scored == detection.points_scored > 0
