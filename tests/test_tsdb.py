"""Wire-format tests of the TSDB client through ``httpx.MockTransport`` (no servers).

Behaviour against real servers is in ``test_tsdb_integration.py``.
"""

from __future__ import annotations

import base64
import gc
from collections.abc import Callable
from urllib.parse import parse_qs

import cramjam
import httpx
import numpy as np
import pytest

from openanomaly.core.config import TSDBSettings
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import QueryError, RemoteWriteError
from openanomaly.io import remote_write as _remote_write
from openanomaly.io.tsdb import PrometheusClient, backoff_delay

URL = "http://tsdb.test:8428"
STEP = 60_000
T0 = 1_700_000_040_000  # a multiple of STEP


def make_client(handler: Callable[[httpx.Request], httpx.Response], **settings: object) -> PrometheusClient:
    options = {"url": URL, "retries": 2, "backoff": 0.001, **settings}
    return PrometheusClient(TSDBSettings(**options), transport=httpx.MockTransport(handler))


def decoded(request: httpx.Request) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    """(labels in wire order, [(timestamp, value)]) per series of a remote-write request."""
    message = _remote_write.decode_write_request(request.content)
    return [
        (
            {label.name: label.value for label in series.labels},
            [(sample.timestamp, sample.value) for sample in series.samples],
        )
        for series in message.timeseries
    ]


def form(request: httpx.Request) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(request.content.decode()).items()}


def matrix_response(series: list[tuple[dict[str, str], list[tuple[int, float]]]]) -> httpx.Response:
    result = [
        {"metric": labels, "values": [[ms / 1000, repr(float(value))] for ms, value in points]}
        for labels, points in series
    ]
    return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": result}})


# -- the encoder ---------------------------------------------------------------------------


def encode_both(
    labels: list[dict[str, str]], timestamps: np.ndarray, values: np.ndarray
) -> tuple[bytes, bytes]:
    """(fast encoder, protobuf objects) encodings of the non-NaN cells."""
    present = ~np.isnan(values)
    rows, columns = np.nonzero(present)
    fast = _remote_write.encode_write_request(
        [_remote_write.encode_labels(label_set) for label_set in labels],
        rows,
        columns,
        _remote_write.TimestampGrid(timestamps.astype(np.int64)),
        values[rows, columns],
    )
    reference = _remote_write.encode_write_request_protobuf(
        labels, [timestamps[row] for row in present], [values[i][present[i]] for i in range(len(labels))]
    )
    return fast, reference


@pytest.mark.parametrize(
    "timestamps",
    [
        T0 + STEP * np.arange(40),  # every varint 6 bytes: the structured-array path
        np.concatenate([[-5_000, 1, 127, 128, 16_383, 16_384], T0 + STEP * np.arange(34)]),  # mixed widths
    ],
    ids=["uniform-grid", "mixed-varint-widths"],
)
def test_fast_encoder_is_byte_identical_to_protobuf(timestamps: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    n = 12
    values = rng.normal(size=(n, 40)) * 10.0 ** rng.integers(-5, 12, size=(n, 1))
    values[2, :] = np.inf
    values[3, :5] = -np.inf
    values[values > 8] = np.nan
    labels = [
        {"__name__": "m", "job": f"j{i}", "Upper": "x", "empty": "", "utf8": "é✓", "long": "v" * (60 * i)}
        for i in range(n)
    ]  # "long": label fields of 1 and 2 length bytes

    fast, reference = encode_both(labels, timestamps, values)
    assert fast == reference

    message = _remote_write.WriteRequest()
    message.ParseFromString(fast)
    assert [label.name for label in message.timeseries[0].labels] == ["Upper", "__name__", "job", "utf8"]
    names = ["Upper", "__name__", "job", "long", "utf8"]
    assert [label.name for label in message.timeseries[5].labels] == names
    assert message.timeseries[0].samples[0].timestamp == timestamps[0]


def test_fast_encoder_writes_zeros_explicitly_and_decodes_the_same() -> None:
    timestamps = np.array([0, 1, T0, T0 + STEP])
    values = np.array([[0.0, -0.0, 1.5, 0.0], [np.nan, 0.0, np.nan, 2.0]])
    labels = [{"__name__": "m", "k": "a"}, {"__name__": "m", "k": "b"}]
    fast, reference = encode_both(labels, timestamps, values)
    assert len(fast) > len(reference)  # proto3 omits zero fields; the fast encoder keeps them
    decoded_fast, decoded_reference = _remote_write.WriteRequest(), _remote_write.WriteRequest()
    decoded_fast.ParseFromString(fast)
    decoded_reference.ParseFromString(reference)
    assert decoded_fast == decoded_reference
    assert [(s.timestamp, s.value) for s in decoded_fast.timeseries[1].samples] == [
        (1, 0.0),
        (T0 + STEP, 2.0),
    ]


def test_remote_write_wire_format() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    matrix = SeriesMatrix.from_rows(
        [{"job": "api", "__name__": "yhat", "instance": "a:1"}, {"__name__": "yhat", "job": "db"}],
        [T0, T0 + STEP, T0 + 2 * STEP],
        [[1.5, np.nan, -2.25], [np.nan, np.nan, 1e300]],
    )
    with make_client(handler) as client:
        assert client.remote_write(matrix) == 3

    (request,) = requests
    assert request.method == "POST"
    assert str(request.url) == f"{URL}/api/v1/write"
    assert request.headers["Content-Encoding"] == "snappy"
    assert request.headers["Content-Type"] == "application/x-protobuf"
    assert request.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert request.headers["User-Agent"].startswith("openanomaly/")
    # snappy *block* format: decompress_raw must accept it (the framed format would not)
    cramjam.snappy.decompress_raw(request.content)
    series = decoded(request)
    assert [list(labels) for labels, _ in series] == [["__name__", "instance", "job"], ["__name__", "job"]]
    assert series == [
        ({"__name__": "yhat", "instance": "a:1", "job": "api"}, [(T0, 1.5), (T0 + 2 * STEP, -2.25)]),
        ({"__name__": "yhat", "job": "db"}, [(T0 + 2 * STEP, 1e300)]),
    ]


def test_remote_write_batches_without_losing_or_repeating_samples() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    t = 20
    values = np.arange(5 * t, dtype=float).reshape(5, t)
    values[1, :] = np.nan  # skipped entirely
    values[2, 5:] = np.nan  # 5 samples
    labels = [{"__name__": "m", "row": str(i)} for i in range(5)]
    matrix = SeriesMatrix.from_rows(labels, T0 + STEP * np.arange(t), values)
    with make_client(handler, write_batch_samples=7) as client:
        written = client.remote_write(matrix)

    assert written == int(np.sum(~np.isnan(values)))
    batches = [decoded(request) for request in requests]
    assert all(sum(len(points) for _, points in batch) <= 7 for batch in batches)
    received: dict[str, list[tuple[int, float]]] = {}
    for batch in batches:
        for labels_seen, points in batch:
            received.setdefault(labels_seen["row"], []).extend(points)
    expected = {
        str(i): [(T0 + STEP * j, values[i, j]) for j in range(t) if not np.isnan(values[i, j])]
        for i in range(5)
        if not np.all(np.isnan(values[i]))
    }
    assert received == expected


def test_remote_write_of_nothing_sends_nothing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    matrix = SeriesMatrix.from_rows([{"__name__": "m"}], [T0, T0 + STEP], [[np.nan, np.nan]])
    with make_client(handler) as client:
        assert client.remote_write(matrix) == 0
        assert client.remote_write(SeriesMatrix.empty()) == 0


def test_remote_write_retries_5xx_then_succeeds() -> None:
    statuses = iter([503, 502, 204])
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(next(statuses), text="busy")

    matrix = SeriesMatrix.from_rows([{"__name__": "m"}], [T0], [[1.0]])
    with make_client(handler, retries=2) as client:
        assert client.remote_write(matrix) == 1
    assert len(bodies) == 3 and len(set(bodies)) == 1


def test_remote_write_never_retries_4xx() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, text="out of order sample\n")

    matrix = SeriesMatrix.from_rows([{"__name__": "m"}], [T0], [[1.0]])
    with make_client(handler, retries=5) as client, pytest.raises(RemoteWriteError) as caught:
        client.remote_write(matrix)
    assert len(calls) == 1
    assert caught.value.status == 400
    assert caught.value.url == f"{URL}/api/v1/write"
    assert "HTTP 400" in str(caught.value) and "out of order sample" in str(caught.value)


def test_remote_write_gives_up_after_retries() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500, text="too old sample")

    matrix = SeriesMatrix.from_rows([{"__name__": "m"}], [T0], [[1.0]])
    with make_client(handler, retries=2) as client, pytest.raises(RemoteWriteError) as caught:
        client.remote_write(matrix)
    assert len(calls) == 3
    assert caught.value.status == 500
    assert "after 3 attempts" in str(caught.value) and "too old sample" in str(caught.value)


def test_remote_write_retries_429_honouring_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote-write spec: 429 is retried, after at least the server's Retry-After."""
    waits: list[float] = []
    monkeypatch.setattr("openanomaly.io.tsdb.time.sleep", waits.append)
    responses = iter(
        [httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(429), httpx.Response(204)]
    )
    matrix = SeriesMatrix.from_rows([{"__name__": "m"}], [T0], [[1.0]])
    with make_client(lambda request: next(responses), retries=3) as client:
        assert client.remote_write(matrix) == 1
    assert waits[0] >= 2.0 and waits[1] < 2.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_other_4xx_are_never_retried(status: int) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, headers={"Retry-After": "1"})

    matrix = SeriesMatrix.from_rows([{"__name__": "m"}], [T0], [[1.0]])
    with make_client(handler, retries=5) as client, pytest.raises(RemoteWriteError):
        client.remote_write(matrix)
    assert len(calls) == 1


def test_backoff_is_capped_exponential_with_jitter() -> None:
    delays = [[backoff_delay(attempt, base=0.5) for _ in range(200)] for attempt in (1, 3, 10)]
    assert max(delays[0]) <= 0.5 and max(delays[1]) <= 2.0 and max(delays[2]) <= 30.0
    assert len(set(delays[2])) > 100 and max(delays[2]) > 15  # spread over (0, cap], not fixed
    assert backoff_delay(1, base=0.5, retry_after=7.0) >= 7.0
    assert backoff_delay(1, base=0.5, retry_after=10_000) == 300.0


def test_server_text_is_cut_and_stripped_of_header_values() -> None:
    """A proxy that reflects request headers must not put credentials into errors."""

    def handler(request: httpx.Request) -> httpx.Response:
        echoed = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        return httpx.Response(400, text=echoed + "\n" + "x" * 5000)

    matrix = SeriesMatrix.from_rows([{"__name__": "m"}], [T0], [[1.0]])
    for auth in ({"bearer_token": "tok-2718281828"}, {"username": "alice", "password": "pw-3141592653"}):
        headers = {"X-Scope-OrgID": "tenant-secret-1618"}
        with (
            make_client(handler, headers=headers, **auth) as client,
            pytest.raises(RemoteWriteError) as caught,
        ):
            client.remote_write(matrix)
        message = str(caught.value)
        assert len(message) < 500
        for secret in (
            "tok-2718281828",
            "pw-3141592653",
            "tenant-secret-1618",
            "YWxpY2U6cHctMzE0MTU5MjY1Mw==",
        ):
            assert secret not in message
        assert "***" in message


def test_url_userinfo_becomes_basic_auth_and_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(503, text="busy")

    settings = {"url": "http://alice:pw%2F123@tsdb.test:8428", "retries": 1}
    matrix = SeriesMatrix.from_rows([{"__name__": "m"}], [T0], [[1.0]])
    with make_client(handler, **settings) as client, pytest.raises(RemoteWriteError) as caught:
        client.remote_write(matrix)
    assert client.settings.url == URL and client.settings.username == "alice"
    assert seen[0] == "Basic " + base64.b64encode(b"alice:pw/123").decode()
    assert "pw" not in str(caught.value) and "pw" not in caplog.text and "alice" not in caplog.text


def test_numeric_secrets_are_accepted_and_never_echoed() -> None:
    settings = TSDBSettings(url=URL, bearer_token=8812771234567)
    assert settings.bearer_token is not None and settings.bearer_token.get_secret_value() == "8812771234567"
    assert "8812771234567" not in repr(settings) and "8812771234567" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("labels", "problem"),
    [({"job": "x"}, "no __name__"), ({"__name__": "m", "bad-name": "x"}, "'bad-name' is not a valid label")],
)
def test_remote_write_refuses_invalid_labels_before_sending(labels: dict[str, str], problem: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    matrix = SeriesMatrix.from_rows([{"__name__": "ok"}, labels], [T0], [[1.0], [2.0]])
    with make_client(handler) as client, pytest.raises(RemoteWriteError, match=problem):
        client.remote_write(matrix)


# -- reading -------------------------------------------------------------------------------


def grid_server(
    series: dict[str, Callable[[int], float | None]], requests: list[dict[str, str]]
) -> Callable[[httpx.Request], httpx.Response]:
    """A query_range handler evaluating ``series`` (name -> value at ms, None = no point)."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query_range"
        query = form(request)
        requests.append(query)
        start, end = round(float(query["start"]) * 1000), round(float(query["end"]) * 1000)
        step = round(float(query["step"]) * 1000)
        result = []
        for name, value_at in series.items():
            points = [(ms, value_at(ms)) for ms in range(start, end + 1, step)]
            points = [(ms, value) for ms, value in points if value is not None]
            if points:
                result.append(({"__name__": "m", "name": name}, points))
        return matrix_response(result)

    return handler


def test_query_range_splits_long_ranges_and_stitches_one_grid() -> None:
    requests: list[dict[str, str]] = []
    handler = grid_server(
        {
            "b": lambda ms: float((ms - T0) // STEP),
            "a": lambda ms: 7.0 if (ms - T0) // STEP in (2, 9) else None,  # only in chunks 1 and 3
        },
        requests,
    )
    with make_client(handler, max_points_per_query=4) as client:
        matrix = client.query_range("m", start_ms=T0, end_ms=T0 + 9 * STEP, step_ms=STEP)

    assert [(q["start"], q["end"], q["step"]) for q in requests] == [
        (f"{(T0 + a * STEP) / 1000:.3f}", f"{(T0 + b * STEP) / 1000:.3f}", "60.000")
        for a, b in [(0, 3), (4, 7), (8, 9)]
    ]
    assert all(q["query"] == "m" for q in requests)
    np.testing.assert_array_equal(matrix.timestamps, T0 + STEP * np.arange(10))
    assert matrix.labels == ({"__name__": "m", "name": "a"}, {"__name__": "m", "name": "b"})
    expected_a = np.full(10, np.nan)
    expected_a[[2, 9]] = 7.0
    np.testing.assert_array_equal(matrix.values[0], expected_a)
    np.testing.assert_array_equal(matrix.values[1], np.arange(10.0))


def test_query_range_aligns_start_down_to_the_step() -> None:
    requests: list[dict[str, str]] = []
    with make_client(grid_server({"x": lambda ms: 1.0}, requests)) as client:
        matrix = client.query_range("m", start_ms=T0 + 25_000, end_ms=T0 + 2 * STEP + 59_999, step_ms=STEP)
    assert requests[0]["start"] == f"{T0 / 1000:.3f}"
    np.testing.assert_array_equal(matrix.timestamps, [T0, T0 + STEP, T0 + 2 * STEP])


def test_query_range_with_no_series_is_an_empty_matrix_on_the_grid() -> None:
    with make_client(lambda request: matrix_response([])) as client:
        matrix = client.query_range("nothing", start_ms=T0, end_ms=T0 + STEP, step_ms=STEP)
    assert len(matrix) == 0 and matrix.values.shape == (0, 2)


def test_query_range_parses_special_values() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [{"metric": {}, "values": [[T0 / 1000, "NaN"], [(T0 + STEP) / 1000, "+Inf"]]}],
        },
    }
    with make_client(lambda request: httpx.Response(200, json=body)) as client:
        matrix = client.query_range("m", start_ms=T0, end_ms=T0 + STEP, step_ms=STEP)
    assert np.isnan(matrix.values[0, 0]) and matrix.values[0, 1] == np.inf


def test_query_range_refuses_points_off_the_grid() -> None:
    response = matrix_response([({"__name__": "m"}, [(T0 + 1_000, 1.0)])])
    with (
        make_client(lambda request: response) as client,
        pytest.raises(QueryError, match="off the requested grid"),
    ):
        client.query_range("m", start_ms=T0, end_ms=T0 + STEP, step_ms=STEP)


def test_query_range_4xx_fails_at_once_with_the_server_message() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        error = {
            "status": "error",
            "errorType": "bad_data",
            "error": "1:5: parse error: unclosed left parenthesis",
        }
        return httpx.Response(400, json=error)

    with make_client(handler, retries=5) as client, pytest.raises(QueryError) as caught:
        client.query_range("sum(", start_ms=T0, end_ms=T0, step_ms=STEP)
    assert len(calls) == 1
    error = caught.value
    assert (error.status, error.query, error.url) == (400, "sum(", f"{URL}/api/v1/query_range")
    assert "unclosed left parenthesis" in str(error) and "'sum('" in str(error) and URL in str(error)


def test_query_range_retries_5xx_then_succeeds() -> None:
    responses = iter(
        [httpx.Response(503, text="starting"), matrix_response([({"__name__": "m"}, [(T0, 2.0)])])]
    )
    with make_client(lambda request: next(responses)) as client:
        matrix = client.query_range("m", start_ms=T0, end_ms=T0, step_ms=STEP)
    assert matrix.values.tolist() == [[2.0]]


def test_unreachable_server_raises_after_the_retries() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with make_client(handler, retries=3) as client, pytest.raises(QueryError) as caught:
        client.query_range("up", start_ms=T0, end_ms=T0, step_ms=STEP)
    assert len(calls) == 4
    assert f"could not connect to {URL}/api/v1/query_range after 4 attempts" in str(caught.value)
    assert caught.value.status is None


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"bearer_token": "s3cret"}, {"authorization": "Bearer s3cret"}),
        ({"username": "u", "password": "p"}, {"authorization": "Basic dTpw"}),
        ({"headers": {"X-Scope-OrgID": "team-a"}}, {"x-scope-orgid": "team-a"}),
    ],
)
def test_auth_and_extra_headers_on_reads_and_writes(
    settings: dict[str, object], expected: dict[str, str]
) -> None:
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        if request.url.path == "/api/v1/write":
            return httpx.Response(204)
        return matrix_response([])

    with make_client(handler, **settings) as client:
        client.query_range("up", start_ms=T0, end_ms=T0, step_ms=STEP)
        client.remote_write(SeriesMatrix.from_rows([{"__name__": "m"}], [T0], [[1.0]]))
    for headers in seen:
        assert {key: headers.get(key) for key in expected} == expected


def test_series_lists_label_sets() -> None:
    requests: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/series"
        requests.append(form(request))
        return httpx.Response(200, json={"status": "success", "data": [{"__name__": "up", "job": "a"}]})

    with make_client(handler) as client:
        assert client.series('up{job="a"}', start_ms=T0, end_ms=T0 + STEP) == [{"__name__": "up", "job": "a"}]
    assert requests == [
        {"match[]": 'up{job="a"}', "start": f"{T0 / 1000:.3f}", "end": f"{(T0 + STEP) / 1000:.3f}"}
    ]


def test_non_json_body_is_a_query_error() -> None:
    client = make_client(lambda request: httpx.Response(200, text="<html>proxy</html>"))
    with client, pytest.raises(QueryError, match="not JSON"):
        client.query_range("up", start_ms=T0, end_ms=T0, step_ms=STEP)


@pytest.mark.parametrize("collector_on", [True, False])
def test_decoding_leaves_the_garbage_collector_as_it_found_it(collector_on: bool) -> None:
    # Decoding pauses the collector (a large answer is millions of small lists); an answer
    # that decodes, one that does not, and one off the grid each leave it as it was.
    answers = iter(
        [
            matrix_response([({"__name__": "up"}, [(T0, 1.0)])]),
            httpx.Response(200, text="<html>proxy</html>"),
            matrix_response([({"__name__": "up"}, [(T0 + 1, 1.0)])]),
        ]
    )
    was = gc.isenabled()
    (gc.enable if collector_on else gc.disable)()
    try:
        with make_client(lambda request: next(answers)) as client:
            assert client.query_range("up", start_ms=T0, end_ms=T0, step_ms=STEP).values.tolist() == [[1.0]]
            assert gc.isenabled() is collector_on
            for _ in range(2):
                with pytest.raises(QueryError):
                    client.query_range("up", start_ms=T0, end_ms=T0, step_ms=STEP)
                assert gc.isenabled() is collector_on
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize(("start", "end", "step"), [(T0, T0, 0), (T0, T0 - 1, STEP)])
def test_query_range_rejects_bad_arguments(start: int, end: int, step: int) -> None:
    with make_client(lambda request: matrix_response([])) as client, pytest.raises(ValueError):
        client.query_range("up", start_ms=start, end_ms=end, step_ms=step)
