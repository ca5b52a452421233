"""Turn a forecast band and the actual values into anomaly scores. Pure numpy.

The convention matches VictoriaMetrics vmanomaly dashboards: a score **at most 1**
means "inside the band", a score **above 1** means "outside", and the amount above 1
counts band widths. Alert on ``anomaly_score > 1``.

Definitions, for one point (``actual`` = ``y``, forecast median ``yhat``, band
``[lo, hi]``, width ``w = hi - lo``):

- **outside** above (``y > hi``): ``score = 1 + (y - hi) / w``;
  below (``y < lo``): ``score = 1 + (lo - y) / w``. So a point one full band width
  above the upper edge scores 2.
- **inside** (``lo <= y <= hi``): how far toward the edge on that side,
  ``|y - c| / (hi - c)`` above the centre ``c`` and ``|y - c| / (c - lo)`` below it,
  where ``c = clip(yhat, lo, hi)``. It lies in ``[0, 1]``: 0 on the forecast, 1 exactly
  on an edge (still "not anomalous"). An inside point whose side has zero half-width
  is on the centre and scores 0.
- **flat band** (``w`` tiny or zero, e.g. a constant series): the width used for outside
  points is at least ``FLAT_BAND_REL * max(|yhat|, 1)``, so any departure from a flat
  forecast gets a finite score > 1 instead of ``inf``; a point exactly on it scores 0.
- ``direction="above"`` ignores drops (points below the centre score 0), and
  ``direction="below"`` ignores rises; ``"both"`` scores both sides.
- ``min_deviation`` (absolute, in the metric's unit): a point with
  ``|y - yhat| < min_deviation`` scores ``min(score, |y - yhat| / min_deviation)``,
  which is below 1. Use it for metrics where tiny absolute wiggles around a very
  tight band would otherwise page someone.
- NaN anywhere in a point's inputs (no sample, no forecast) gives a NaN score, and
  NaN scores are not written.

Scorers share one keyword signature (``actual, *, yhat, yhat_lower, yhat_upper,
direction, min_deviation``) so another scorer can be dropped in without touching
callers; arrays of any (broadcastable) shape are accepted.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from openanomaly.models.base import QuantileForecast

__all__ = ["FLAT_BAND_REL", "Direction", "Score", "band_score", "score_forecast"]

Direction = Literal["both", "above", "below"]

FLAT_BAND_REL = 1e-3
"""Floor on the band width, relative to ``max(|yhat|, 1)``, for flat (zero-width) bands."""


class Score(NamedTuple):
    """The four output series for a batch of points, all the same shape."""

    anomaly_score: np.ndarray
    yhat: np.ndarray
    yhat_lower: np.ndarray
    yhat_upper: np.ndarray


def band_score(
    actual: np.ndarray,
    *,
    yhat: np.ndarray,
    yhat_lower: np.ndarray,
    yhat_upper: np.ndarray,
    direction: Direction = "both",
    min_deviation: float = 0.0,
) -> np.ndarray:
    """Score how far ``actual`` falls outside ``[yhat_lower, yhat_upper]`` (see module docs).

    Args:
        actual: observed values, any shape; NaN = no sample.
        yhat: point forecast (median), broadcastable to ``actual``.
        yhat_lower: lower band edge, broadcastable to ``actual``.
        yhat_upper: upper band edge, broadcastable to ``actual``.
        direction: ``both``, ``above`` (only rises score > 1) or ``below`` (only drops).
        min_deviation: absolute deviation under which a point cannot score > 1; >= 0.

    Returns:
        float64 scores, the broadcast shape; ``<= 1`` inside the band, ``> 1`` outside, NaN
        where any input is NaN.

    Raises:
        ValueError: unknown ``direction``, negative ``min_deviation``, or a band whose
            lower edge exceeds its upper edge.

    Example:
        >>> band_score(np.array([10.0, 12.0, 15.0]), yhat=10.0, yhat_lower=8.0, yhat_upper=12.0).tolist()
        [0.0, 1.0, 1.75]
    """
    if direction not in ("both", "above", "below"):
        raise ValueError(f"direction must be 'both', 'above' or 'below', got {direction!r}")
    if not min_deviation >= 0:
        raise ValueError(f"min_deviation must be >= 0, got {min_deviation!r}")
    y, mid, lo, hi = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (actual, yhat, yhat_lower, yhat_upper))
    )
    if np.any(lo > hi):
        raise ValueError("yhat_lower exceeds yhat_upper: the forecast band is inverted")
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.clip(mid, lo, hi)
        floor = FLAT_BAND_REL * np.maximum(np.abs(mid), 1.0)
        width = np.maximum(hi - lo, floor)
        above = y > centre
        # Inside: fraction of the half-width on the point's side (0 at the centre, 1 on the edge).
        half = np.where(above, hi - centre, centre - lo)
        distance = np.abs(y - centre)
        inside = np.where(distance == 0, 0.0, distance / half)
        outside_by = np.where(above, y - hi, lo - y)
        score = np.where(outside_by > 0, 1.0 + outside_by / width, np.minimum(inside, 1.0))
        if direction == "above":
            score = np.where(y < centre, 0.0, score)
        elif direction == "below":
            score = np.where(y > centre, 0.0, score)
        if min_deviation > 0:
            deviation = np.abs(y - mid)
            score = np.where(deviation < min_deviation, np.minimum(score, deviation / min_deviation), score)
    nan = np.isnan(y) | np.isnan(mid) | np.isnan(lo) | np.isnan(hi)
    return np.where(nan, np.nan, score)


def score_forecast(
    actual: np.ndarray,
    forecast: QuantileForecast,
    *,
    quantiles: tuple[float, float],
    direction: Direction = "both",
    min_deviation: float = 0.0,
) -> Score:
    """Score ``actual`` ``(n, h)`` against a forecast's own band for the same ``(n, h)`` points.

    The band is the forecast at ``quantiles`` (which must be among ``forecast.levels``);
    ``yhat`` is the forecast median. Uncalibrated: the stage is off.

    Raises:
        ModelError: the forecast lacks one of the band's quantile levels.
        ValueError: ``actual`` does not have the forecast's ``(n, h)`` shape.
    """
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != forecast.median.shape:
        raise ValueError(f"actual has shape {actual.shape}, forecast covers {forecast.median.shape}")
    low, high = quantiles
    lower, upper = forecast.level(low), forecast.level(high)
    yhat = forecast.median
    score = band_score(
        actual,
        yhat=yhat,
        yhat_lower=lower,
        yhat_upper=upper,
        direction=direction,
        min_deviation=min_deviation,
    )
    return Score(score, yhat, lower, upper)
