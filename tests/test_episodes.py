"""Anomaly episodes: runs merged across batch edges, the pipeline column, and label matching."""

from __future__ import annotations

import io

import numpy as np

from openanomaly.core.detect import Detection
from openanomaly.core.episodes import EpisodeCollector, check_labels, print_episodes

MINUTE = 60_000


def _detection(first_ms: int, scores: list[float]) -> Detection:
    values = np.asarray([scores], dtype=np.float64)
    stamps = first_ms + MINUTE * np.arange(len(scores), dtype=np.int64)
    return Detection(({"__name__": "m", "host": "a"},), stamps, values * 10, values, values, values, values)


def test_runs_are_merged_across_batches_and_keep_the_peak() -> None:
    collector = EpisodeCollector(pipeline="cpu", step_ms=MINUTE)
    collector.add(_detection(0, [0.5, 2.0, 3.0]))
    collector.add(_detection(3 * MINUTE, [4.0, 0.2, 1.5]))
    first, second = collector.episodes
    assert (first.pipeline, first.start_ms, first.end_ms, first.points) == ("cpu", MINUTE, 3 * MINUTE, 3)
    assert (first.max_score, first.peak_ms, first.peak_value) == (4.0, 3 * MINUTE, 40.0)
    assert (second.start_ms, second.points) == (5 * MINUTE, 1)


def test_table_names_the_pipeline_of_each_episode() -> None:
    episodes = []
    for name, scores in (("cpu", [2.0]), ("latency-p99", [0.0, 5.0])):
        collector = EpisodeCollector(pipeline=name, step_ms=MINUTE)
        collector.add(_detection(0, scores))
        episodes += collector.episodes
    stream = io.StringIO()
    print_episodes(episodes, top=10, stream=stream)
    rows = stream.getvalue().splitlines()
    assert rows[0] == "top 2 of 2 anomaly episodes (by peak score):"
    assert rows[1].split()[0] == "pipeline"
    assert [row.split()[0] for row in rows[2:]] == ["latency-p99", "cpu"]  # highest peak first


def test_label_check_counts_detections_false_alarms_precision_recall() -> None:
    collector = EpisodeCollector(pipeline="p", step_ms=MINUTE)
    collector.add(_detection(0, [2.0, 0, 0, 0, 3.0, 0, 0, 0, 0, 1.5]))  # episodes at 0, 4, 9 min
    windows = [(3 * MINUTE, 5 * MINUTE), (20 * MINUTE, 30 * MINUTE)]
    check = check_labels(collector.episodes, windows)
    assert [len(hits) for hits in check.hits] == [1, 0]
    assert [e.start_ms for e in check.false_alarms] == [0, 9 * MINUTE]
    assert (check.detected, check.true_episodes) == (1, 1)
    assert check.precision == 1 / 3 and check.recall == 0.5
    assert np.isnan(check_labels([], windows).precision)
