"""Synthetic training series: KernelSynth-style Gaussian processes plus the shapes SREs see.

No real series may be used for pretraining (NAB and SMD are the evaluation), so the
model learns from generated data only, like Chronos' KernelSynth. Two families:

* **KernelSynth.** Random sums and products of 1-4 kernels from a bank (periodic at
  SRE-typical periods, RBF and rational-quadratic at several length scales, linear,
  constant, white noise). Instead of a Cholesky factorisation per series (O(L^3)),
  each kernel's GP is drawn from its spectral representation (random Fourier features;
  exact Fourier series for the periodic kernel). Sums and products of independent
  draws have exactly the sum and product kernels as covariance, so the second-order
  structure matches KernelSynth at a fraction of the cost (a batch takes milliseconds).
* **SRE shapes.** A positive level with daily and weekly seasonality (sampling steps
  of 1 to 60 minutes), slow drift, level steps, and one of: gaussian noise, a counter's
  per-step rate (Poisson increments), spiky latencies (log-normal with heavy-tailed
  spikes), integer counts.

Both then get missing points (scattered and gaps) and, sometimes, a shorter history
(NaN left padding), as the pipeline sees in production.

Every batch comes from ``numpy.random.default_rng((seed, index))``: the same seed and
batch index give the same batch on any machine, and a resumed training run sees the
batches it would have seen without the interruption.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ive

__all__ = ["STEPS_PER_DAY", "make_batch", "sample_series"]

# Sampling steps per day for 60, 30, 15, 10, 5, 1 minute scrapes.
STEPS_PER_DAY = (24, 48, 96, 144, 288, 1440)
_PERIODS = (4, 7, 12, 24, 30, 48, 60, 96, 144, 168, 288, 336, 1440)
_FEATURES = 48  # random Fourier features per stationary kernel
_HARMONICS = 12  # Fourier terms of the periodic kernel


def make_batch(seed: int, index: int, size: int, length: int) -> np.ndarray:
    """Batch ``index`` of the stream for ``seed``: float32 ``(size, length)``, NaN = missing."""
    rng = np.random.default_rng((seed, index))
    return np.stack([sample_series(rng, length) for _ in range(size)]).astype(np.float32)


def sample_series(rng: np.random.Generator, length: int) -> np.ndarray:
    """One series of ``length`` points (float64, NaN where missing)."""
    values = _kernel_synth(rng, length) if rng.random() < 0.4 else _sre_shape(rng, length)
    return _drop_points(rng, values)


# --- KernelSynth -------------------------------------------------------------------------


def _kernel_synth(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    values = _kernel_draw(rng, t)
    for _ in range(rng.integers(0, 4)):
        other = _kernel_draw(rng, t)
        values = values + other if rng.random() < 0.6 else values * other
    scale = 10.0 ** rng.uniform(-2, 4)
    offset = rng.normal(0, 3) * scale if rng.random() < 0.5 else 0.0
    return values * scale + offset


def _kernel_draw(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A zero-mean GP draw (variance about 1) for one kernel picked from the bank."""
    kind = rng.choice(["periodic", "periodic", "rbf", "rq", "linear", "constant", "white"])
    n = t.size
    if kind == "periodic":
        period = float(rng.choice(_PERIODS))
        inverse = 1.0 / rng.choice([0.5, 1.0, 2.0]) ** 2
        k = np.arange(1, _HARMONICS + 1)
        weights = np.sqrt(2 * ive(k, inverse) / (1 - ive(0, inverse)))
        phase = 2 * np.pi * np.outer(t, k) / period
        return np.cos(phase) @ (weights * rng.normal(size=k.size)) + np.sin(phase) @ (
            weights * rng.normal(size=k.size)
        )
    if kind in ("rbf", "rq"):
        lengthscale = n * rng.choice([0.01, 0.03, 0.1, 0.3, 1.0])
        frequency = rng.normal(size=_FEATURES) / lengthscale
        if kind == "rq":  # a scale mixture of RBFs: a gamma-distributed precision per feature
            alpha = rng.choice([0.1, 1.0, 10.0])
            frequency = frequency * np.sqrt(rng.gamma(alpha, 1 / alpha, size=_FEATURES))
        shift = rng.uniform(0, 2 * np.pi, size=_FEATURES)
        return np.sqrt(2 / _FEATURES) * np.cos(np.outer(t, frequency) + shift) @ rng.normal(size=_FEATURES)
    if kind == "linear":
        return rng.normal() * (t / n - rng.uniform()) * 2
    if kind == "constant":
        return np.full(n, rng.normal())
    return rng.normal(size=n) * rng.choice([0.1, 0.5, 1.0])


# --- SRE shapes --------------------------------------------------------------------------


def _sre_shape(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    day = float(rng.choice(STEPS_PER_DAY))
    start = rng.uniform(0, 7 * day)  # random position in the week
    clock = t + start
    shape = 1.0 + _daily(rng, clock, day) * rng.uniform(0.0, 0.8)
    if rng.random() < 0.4:  # quieter weekends
        weekend = ((clock // day) % 7) >= 5
        shape = shape * np.where(weekend, rng.uniform(0.4, 1.0), 1.0)
    if rng.random() < 0.5:  # slow drift: a smooth random walk, or a linear trend
        drift = np.cumsum(rng.normal(0, rng.uniform(0.001, 0.01), size=length))
        shape = shape * np.exp(drift if rng.random() < 0.5 else t / length * rng.normal(0, 0.3))
    if rng.random() < 0.3:  # level steps (deploys, failovers)
        for at in rng.integers(0, length, size=rng.integers(1, 3)):
            shape[at:] = shape[at:] * np.exp(rng.normal(0, 0.4))
    level = 10.0 ** rng.uniform(-1, 5)
    kind = rng.choice(["gauge", "counter_rate", "latency", "counts"])
    if kind == "counts":
        return rng.poisson(np.clip(shape, 0, None) * 10.0 ** rng.uniform(-1, 2.5)).astype(np.float64)
    intensity = np.clip(shape, 1e-3, None) * level
    if kind == "counter_rate":  # rate() of a counter: Poisson increments over a scrape interval
        per_step = 10.0 ** rng.uniform(0, 3)
        return rng.poisson(intensity / level * per_step) * (level / per_step)
    if kind == "latency":
        noisy = intensity * rng.lognormal(0, rng.uniform(0.05, 0.4), size=length)
        spikes = rng.random(length) < rng.uniform(0, 0.03)
        return noisy * np.where(spikes, 1 + rng.pareto(1.5, size=length), 1.0)
    noise = rng.normal(0, rng.uniform(0.0, 0.15), size=length) * level
    return intensity + noise


def _daily(rng: np.random.Generator, clock: np.ndarray, day: float) -> np.ndarray:
    """A daily profile in about [-1, 1]: a few harmonics, or a business-hours bump."""
    phase = 2 * np.pi * clock / day
    if rng.random() < 0.5:
        harmonics = np.arange(1, 4)
        amplitude = rng.normal(size=3) / harmonics
        offsets = rng.uniform(0, 2 * np.pi, size=3)
        profile = np.cos(np.outer(phase, harmonics) + offsets) @ amplitude
        return profile / max(np.abs(profile).max(), 1e-9)
    peak = rng.uniform(0, 2 * np.pi)
    return np.exp(rng.uniform(1, 4) * (np.cos(phase - peak) - 1)) * 2 - 1


# --- missing data ------------------------------------------------------------------------


def _drop_points(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Scattered missing points, gaps and a shorter history, each for some series."""
    values = values.copy()
    n = values.size
    if rng.random() < 0.2:
        values[rng.random(n) < rng.uniform(0, 0.1)] = np.nan
    if rng.random() < 0.1:
        start = rng.integers(0, n)
        values[start : start + rng.integers(1, n // 8)] = np.nan
    if rng.random() < 0.15:  # a series younger than the context: NaN left padding
        values[: rng.integers(0, n // 2)] = np.nan
    return values
