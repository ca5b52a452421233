"""NAB scorer, event F1 and VUS-PR on hand-made cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from openanomaly.evaluation import (
    PRODUCTION_THRESHOLD,
    PROFILES,
    best_event_f1,
    event_counts,
    file_score,
    optimise_threshold,
    probationary_length,
    scaled_sigmoid,
    score_at_threshold,
    vus_pr,
)

STANDARD = PROFILES["standard"]
N = 100  # probation = 15 rows
WINDOW = np.array([[40, 49]])  # width 10


def _scores(*rows: int) -> np.ndarray:
    scores = np.zeros(N)
    scores[list(rows)] = 1.0
    return scores


def _normalised(scores: np.ndarray, profile=STANDARD, threshold: float = 0.5) -> float:
    return score_at_threshold([scores], [WINDOW], threshold, profile).normalised


def test_probation_is_15_percent_capped_at_750() -> None:
    assert probationary_length(100) == 15
    assert probationary_length(4032) == 604
    assert probationary_length(22695) == 750


def test_scaled_sigmoid_reference_points() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(3.0) == -1.0


def test_nothing_detected_is_null_score_zero() -> None:
    raw, hits, fps = file_score(np.zeros(N), WINDOW, 0.5, STANDARD)
    assert (raw, hits, fps) == (-1.0, 0, 0)
    assert _normalised(np.zeros(N)) == 0.0


def test_detection_at_window_start_is_perfect_100() -> None:
    raw, hits, _ = file_score(_scores(40), WINDOW, 0.5, STANDARD)
    assert raw == pytest.approx(1.0)
    assert hits == 1
    assert _normalised(_scores(40)) == pytest.approx(100.0)


def test_detection_at_window_end_earns_little() -> None:
    expected_raw = (2 / (1 + math.exp(-0.5)) - 1) / (2 / (1 + math.exp(-5)) - 1)  # sigma(-1/10)/sigma(-1)
    raw, _, _ = file_score(_scores(49), WINDOW, 0.5, STANDARD)
    assert raw == pytest.approx(expected_raw)
    assert _normalised(_scores(49)) == pytest.approx(100 * (expected_raw + 1) / 2)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    assert file_score(_scores(40, 45, 49), WINDOW, 0.5, STANDARD)[0] == pytest.approx(1.0)


def test_false_positive_before_any_window_costs_fp_weight() -> None:
    raw, hits, fps = file_score(_scores(20), WINDOW, 0.5, STANDARD)
    assert raw == pytest.approx(-1.0 - 0.11)
    assert (hits, fps) == (0, 1)
    low_fp = PROFILES["reward_low_fp"]
    assert file_score(_scores(20), WINDOW, 0.5, low_fp)[0] == pytest.approx(-1.0 - 0.22)


def test_false_positive_right_after_a_window_costs_less() -> None:
    # d = |49 - 50| / (10 - 1): just past the window the penalty is small.
    expected = float(scaled_sigmoid(1 / 9)) * 0.11
    assert file_score(_scores(40, 50), WINDOW, 0.5, STANDARD)[0] == pytest.approx(1.0 + expected)
    far = file_score(_scores(40, 90), WINDOW, 0.5, STANDARD)[0]
    assert far == pytest.approx(1.0 - 0.11)


def test_detections_in_probation_are_ignored() -> None:
    assert file_score(_scores(3, 14), WINDOW, 0.5, STANDARD) == (-1.0, 0, 0)


def test_reward_low_fn_doubles_the_miss_cost() -> None:
    profile = PROFILES["reward_low_fn"]
    assert file_score(np.zeros(N), WINDOW, 0.5, profile)[0] == -2.0
    assert _normalised(_scores(40), profile) == pytest.approx(100.0)


def test_nan_scores_never_detect() -> None:
    scores = np.full(N, np.nan)
    assert file_score(scores, WINDOW, -np.inf, STANDARD)[0] == -1.0


def test_production_threshold_means_score_above_one() -> None:
    scores = np.zeros(N)
    scores[40] = 1.0  # exactly on the band edge: not an alert
    assert file_score(scores, WINDOW, PRODUCTION_THRESHOLD, STANDARD)[0] == -1.0
    scores[40] = 1.0001
    assert file_score(scores, WINDOW, PRODUCTION_THRESHOLD, STANDARD)[0] == pytest.approx(1.0)


def test_optimiser_picks_the_corpus_wide_best_threshold() -> None:
    # File 1: a TP at 0.9 and an FP at 0.95; file 2: an FP at 0.8 only.
    first = np.zeros(N)
    first[40], first[20] = 0.9, 0.95
    second = np.zeros(N)
    second[20] = 0.8
    best = optimise_threshold([first, second], [WINDOW, WINDOW], STANDARD)
    # Threshold 0.9 takes the TP (+1 vs -1) for one FP (-0.11); 0.8 adds an FP for nothing.
    assert best.threshold == 0.9
    assert best.raw == pytest.approx(1.0 - 0.11 - 1.0)
    assert best.windows_detected == 1 and best.false_positive_rows == 1


def test_optimiser_agrees_with_direct_scoring_on_random_scores() -> None:
    rng = np.random.default_rng(1)
    files = [rng.random(N) for _ in range(3)]
    windows = [WINDOW, np.array([[30, 39], [70, 79]]), np.empty((0, 2), dtype=np.int64)]
    best = optimise_threshold(files, windows, STANDARD)
    for t in np.quantile(np.concatenate(files), np.linspace(0, 1, 41)):
        assert score_at_threshold(files, windows, float(t), STANDARD).raw <= best.raw + 1e-9
    assert best.raw == pytest.approx(score_at_threshold(files, windows, best.threshold, STANDARD).raw)


def test_event_counts_merge_consecutive_alerts() -> None:
    scores = np.zeros(N)
    scores[[20, 21, 22]] = 2.0  # one false alert event
    scores[[44, 45]] = 2.0  # one true alert event
    scores[5] = 2.0  # in probation: ignored
    counts = event_counts(scores, WINDOW, 1.5, start=15)
    assert (counts.true_alerts, counts.false_alerts, counts.windows_hit, counts.windows) == (1, 1, 1, 1)
    assert (counts.true_rows, counts.alert_rows) == (2, 5)  # precision is per row
    assert counts.precision == 0.4 and counts.recall == 1.0
    assert counts.f1 == pytest.approx(2 * 0.4 / 1.4)


def test_best_event_f1_of_a_constant_detector_is_the_labelled_fraction() -> None:
    # Alerting on every row hits every window but is precise only on labelled rows.
    files = [np.zeros(N), np.ones(N)]
    windows = [WINDOW, WINDOW]
    threshold, counts = best_event_f1(files, windows, starts=[15, 15])
    labelled = (WINDOW[0, 1] - WINDOW[0, 0] + 1) / (N - 15)
    assert counts.recall == 1.0 and counts.precision == pytest.approx(labelled)
    assert threshold == 0.0  # the sweep starts at the lowest score


def test_best_event_f1_finds_a_rare_alert_among_continuous_scores() -> None:
    # 100k distinct scores, 20 of them above 1 and all inside the window: an even
    # quantile grid steps over them; the sweep must still find the perfect threshold.
    n = 100_000
    scores = np.random.default_rng(1).random(n)
    window = np.array([[50_000, 50_019]])
    scores[50_000:50_020] = 1.5 + np.arange(20) / 100
    threshold, counts = best_event_f1([scores], [window], starts=[0])
    assert counts.f1 == 1.0 and 1.0 < threshold <= 1.5


def test_vus_pr_perfect_random_and_inverted() -> None:
    labels = np.zeros(2000, dtype=bool)
    labels[900:1000] = True
    assert vus_pr(labels, labels.astype(float)) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    random = vus_pr(labels, rng.random(2000))
    assert 0.02 < random < 0.2
    assert vus_pr(labels, -labels.astype(float)) < random


def test_vus_pr_rewards_a_near_miss_more_than_a_far_one() -> None:
    labels = np.zeros(2000, dtype=bool)
    labels[900:1000] = True
    near = np.zeros(2000)
    near[1010] = 1.0
    far = np.zeros(2000)
    far[1500] = 1.0
    assert vus_pr(labels, near) > vus_pr(labels, far)


def test_vus_pr_rejects_unlabelled_series() -> None:
    with pytest.raises(ValueError, match="at least one labelled row"):
        vus_pr(np.zeros(10), np.zeros(10))
