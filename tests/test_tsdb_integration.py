"""The TSDB client against real VictoriaMetrics and real Prometheus (Debian binaries)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import QueryError
from openanomaly.io.tsdb import PrometheusClient
from tests.fixtures.servers import TSDBServer, free_port, unique_metric

pytestmark = pytest.mark.integration

STEP = 60_000


@pytest.fixture(params=["victoria_metrics", "prometheus"])
def server(request: pytest.FixtureRequest) -> TSDBServer:
    return request.getfixturevalue(request.param)


def recent_grid(points: int, *, days_ago: float = 1.0) -> np.ndarray:
    """A step-aligned grid starting ``days_ago`` days back (inside Prometheus' OOO window)."""
    start = (int(time.time() * 1000) - int(days_ago * 86_400_000)) // STEP * STEP
    return start + STEP * np.arange(points, dtype=np.int64)


def test_write_then_read_back_exactly(server: TSDBServer) -> None:
    name = unique_metric()
    timestamps = recent_grid(90)
    rng = np.random.default_rng(1)
    labels = [
        {"__name__": name, "instance": "host-1:9100", "job": "node"},
        {"__name__": name, "instance": "host-2:9100", "job": "node", "zone": "eu-west-1a"},
        {"__name__": name, "instance": "db", "job": "postgres", "note": 'quotes " and \\ and é'},
    ]
    # VictoriaMetrics keeps 12 significant decimal digits; stay within them.
    raw = rng.normal(size=(3, 90))
    values = np.stack([np.round(raw[0] * 1e-3, 9), np.round(raw[1], 6), np.round(raw[2] * 1e9)])
    values[0, 0] = 0.0
    values[1, 5] = -0.0
    matrix = SeriesMatrix.from_rows(labels, timestamps, values)

    with PrometheusClient(server.settings) as client:
        assert client.remote_write(matrix) == values.size
        server.flush()
        read = client.query_range(name, start_ms=int(timestamps[0]), end_ms=int(timestamps[-1]), step_ms=STEP)
        listed = client.series(name, start_ms=int(timestamps[0]), end_ms=int(timestamps[-1]))

    np.testing.assert_array_equal(read.timestamps, timestamps)
    assert read.labels == tuple(sorted(labels, key=lambda label_set: sorted(label_set.items())))
    by_instance = {label_set["instance"]: row for row, label_set in enumerate(read.labels)}
    for row, label_set in enumerate(labels):
        np.testing.assert_array_equal(read.values[by_instance[label_set["instance"]]], values[row])
    assert sorted(listed, key=lambda label_set: label_set["instance"]) == sorted(
        labels, key=lambda label_set: label_set["instance"]
    )


def test_nan_cells_are_not_written(server: TSDBServer) -> None:
    """NaN cells are skipped; read with a window shorter than the step (no lookback fill)."""
    name = unique_metric()
    timestamps = recent_grid(30)
    values = np.arange(60, dtype=float).reshape(2, 30)
    values[0, 3:5] = np.nan
    values[0, 10:20] = np.nan
    values[1, :] = np.nan
    values[1, 29] = 5.0
    matrix = SeriesMatrix.from_rows(
        [{"__name__": name, "s": "a"}, {"__name__": name, "s": "b"}], timestamps, values
    )

    with PrometheusClient(server.settings) as client:
        assert client.remote_write(matrix) == int(np.sum(~np.isnan(values)))
        server.flush()
        # Both servers fill short gaps with the last sample (Prometheus: 5 minutes of
        # lookback); a 59 s window shows exactly the samples that exist.
        read = client.query_range(
            f"last_over_time({name}[59s])",
            start_ms=int(timestamps[0]),
            end_ms=int(timestamps[-1]),
            step_ms=STEP,
        )
    assert [label_set["s"] for label_set in read.labels] == ["a", "b"]
    np.testing.assert_array_equal(read.values, values)


def test_long_range_is_chunked_and_matches_one_query(server: TSDBServer) -> None:
    name = unique_metric()
    timestamps = recent_grid(230, days_ago=1.5)
    values = np.round(np.sin(np.arange(2 * 230, dtype=float)), 6).reshape(2, 230)
    values[1, 100:140] = np.nan  # a series missing from one whole chunk
    matrix = SeriesMatrix.from_rows(
        [{"__name__": name, "k": "1"}, {"__name__": name, "k": "2"}], timestamps, values
    )
    start, end = int(timestamps[0]), int(timestamps[-1])

    with PrometheusClient(server.settings) as writer:
        writer.remote_write(matrix)
    server.flush()
    chunked_settings = server.settings.model_copy(update={"max_points_per_query": 40})
    with PrometheusClient(chunked_settings) as chunked, PrometheusClient(server.settings) as whole:
        query = f"last_over_time({name}[59s])"
        in_chunks = chunked.query_range(query, start_ms=start, end_ms=end, step_ms=STEP)
        at_once = whole.query_range(query, start_ms=start, end_ms=end, step_ms=STEP)

    np.testing.assert_array_equal(in_chunks.timestamps, timestamps)
    assert in_chunks.labels == at_once.labels
    np.testing.assert_array_equal(in_chunks.values, at_once.values)
    np.testing.assert_array_equal(in_chunks.values, values)


def test_bad_promql_raises_query_error_with_the_server_message(server: TSDBServer) -> None:
    timestamps = recent_grid(2)
    with PrometheusClient(server.settings) as client, pytest.raises(QueryError) as caught:
        client.query_range(
            "sum(rate(x[5m]", start_ms=int(timestamps[0]), end_ms=int(timestamps[-1]), step_ms=STEP
        )
    assert 400 <= caught.value.status < 500
    assert caught.value.query == "sum(rate(x[5m]"
    assert "parse" in str(caught.value) or "unparsed" in str(caught.value)


def test_unreachable_port_fails_fast(server: TSDBServer) -> None:
    settings = server.settings.model_copy(update={"url": f"http://127.0.0.1:{free_port()}", "retries": 1})
    began = time.monotonic()
    with (
        PrometheusClient(settings) as client,
        pytest.raises(QueryError, match=r"could not connect to .* 2 attempts"),
    ):
        client.query_range("up", start_ms=0, end_ms=STEP, step_ms=STEP)
    assert time.monotonic() - began < 5  # generous; retries use the fixture's 50 ms backoff


def test_writing_the_same_samples_twice_is_harmless(server: TSDBServer) -> None:
    name = unique_metric()
    timestamps = recent_grid(3)
    matrix = SeriesMatrix.from_rows([{"__name__": name}], timestamps, [[1.0, 2.0, 3.0]])
    with PrometheusClient(server.settings) as client:
        assert client.remote_write(matrix) == 3
        assert client.remote_write(matrix) == 3
        server.flush()
        read = client.query_range(
            f"count_over_time({name}[59s])",
            start_ms=int(timestamps[0]),
            end_ms=int(timestamps[-1]),
            step_ms=STEP,
        )
    np.testing.assert_array_equal(read.values, [[1.0, 1.0, 1.0]])


def test_victoria_metrics_restarts_with_its_data(victoria_metrics: TSDBServer) -> None:
    name = unique_metric()
    timestamps = recent_grid(5)
    matrix = SeriesMatrix.from_rows([{"__name__": name}], timestamps, [[1.0, 2.0, 3.0, 4.0, 5.0]])
    window = {"start_ms": int(timestamps[0]), "end_ms": int(timestamps[-1]), "step_ms": STEP}
    with PrometheusClient(victoria_metrics.settings) as client:
        client.remote_write(matrix)
        victoria_metrics.flush()
        victoria_metrics.stop()
        try:
            with pytest.raises(QueryError, match="could not connect"):
                client.query_range(name, **window)
        finally:
            victoria_metrics.start()
        np.testing.assert_array_equal(client.query_range(name, **window).values, matrix.values)
