"""Read series from and write scores to a Prometheus-compatible TSDB.

``PrometheusClient`` speaks the Prometheus HTTP API (``/api/v1/query_range``,
``/api/v1/series``) and the Prometheus remote-write 1.0 protocol, so the same client
works against Prometheus, VictoriaMetrics and anything else that implements them
(Thanos, Mimir, Cortex receivers...). It returns ``SeriesMatrix`` (numpy), never pandas.

Why the details below:

* **Grid alignment.** ``query_range`` evaluates at ``start + k * step``. VictoriaMetrics
  silently rounds ``start`` down to a multiple of ``step``, Prometheus does not, so the
  client aligns ``start`` down itself: both servers then return the same grid.
* **Chunking.** Servers cap the points per series per request (Prometheus: 11,000;
  VictoriaMetrics: ``-search.maxPointsPerTimeseries``, 30,000 by default). Long ranges
  are split into requests of at most ``max_points_per_query`` points and stitched back
  on the one grid, with no duplicated or missing columns.
* **Retries.** As the remote-write spec asks: connection errors, timeouts, 5xx and 429
  are usually passing (restart, load, rate limit), so they are retried with capped
  exponential backoff and full jitter (clients that failed together do not retry
  together), waiting at least what a ``Retry-After`` header asks; any other 4xx means
  the request itself is wrong (bad PromQL, rejected samples), so it fails at once with
  the server's message.
* **Secrets.** The token and password are ``SecretStr`` and sent only in headers. A
  server's error text is quoted in errors and logs cut to 300 characters, with every
  credential and header value the client sends replaced by ``***`` (a proxy that
  echoes request headers must not put the token into ``last_error`` or a log).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import gc
import logging
import random
import re
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from types import TracebackType
from typing import Any

import httpx
import numpy as np
import orjson

from openanomaly.core.config import TSDBSettings
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import QueryError, RemoteWriteError, TSDBError
from openanomaly.io import remote_write as _remote_write

__all__ = ["PrometheusClient", "backoff_delay"]

_log = logging.getLogger(__name__)

USER_AGENT = f"openanomaly/{version('openanomaly')}"
_MAX_BACKOFF_S = 30.0
_MAX_RETRY_AFTER_S = 300.0
_SERVER_TEXT_CHARS = 300
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


class PrometheusClient:
    """Prometheus HTTP API client over httpx; works with Prometheus and VictoriaMetrics.

    One client holds one connection pool; reuse it, and close it (or use ``with``).

    Args:
        settings: where the server is, auth, timeout, retries, chunk and batch sizes.
        transport: an httpx transport to use instead of the network (tests pass
            ``httpx.MockTransport`` to check the wire format).

    Example:
        >>> from openanomaly.core.config import TSDBSettings
        >>> with PrometheusClient(TSDBSettings(url="http://localhost:8428")) as tsdb:  # doctest: +SKIP
        ...     matrix = tsdb.query_range("up", start_ms=0, end_ms=3_600_000, step_ms=60_000)
        ...     tsdb.remote_write(matrix)
    """

    def __init__(self, settings: TSDBSettings, *, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        headers = {"User-Agent": USER_AGENT, **settings.headers}
        if settings.bearer_token:
            headers["Authorization"] = f"Bearer {settings.bearer_token.get_secret_value()}"
        auth = (
            httpx.BasicAuth(settings.username, settings.password.get_secret_value())
            if settings.username is not None and settings.password is not None
            else None
        )
        self._secrets = _secrets(settings)
        self._client = httpx.Client(
            headers=headers,
            auth=auth,
            timeout=settings.timeout.total_seconds(),
            transport=transport,
        )

    # -- reading ---------------------------------------------------------------------

    def query_range(self, query: str, *, start_ms: int, end_ms: int, step_ms: int) -> SeriesMatrix:
        """Evaluate ``query`` on the grid ``start, start + step, ... <= end`` (milliseconds).

        ``start_ms`` is aligned down to a multiple of ``step_ms`` (pass an aligned start to
        get exactly the grid you asked for), so Prometheus and VictoriaMetrics return the
        same instants. The range is fetched in chunks of at most
        ``settings.max_points_per_query`` points.

        Returns:
            ``SeriesMatrix`` with the full grid as timestamps (shape ``(t,)``), one row per
            label set the query returned in any chunk, sorted by labels; NaN where the
            server returned no point. Labels include ``__name__`` when the server kept it.

        Raises:
            ValueError: ``step_ms <= 0`` or ``end_ms < start_ms``.
            QueryError: the server rejected the query (4xx: bad PromQL; the server's
                message is included), or it stayed unreachable or answered 5xx after
                ``settings.retries`` retries.
        """
        start, count = _grid(start_ms=start_ms, end_ms=end_ms, step_ms=step_ms)
        url = f"{self.settings.url}/api/v1/query_range"
        rows: dict[tuple[tuple[str, str], ...], int] = {}
        labels: list[dict[str, str]] = []
        pieces: list[tuple[int, np.ndarray, np.ndarray]] = []  # (row, columns, values)
        chunk = self.settings.max_points_per_query
        for first in range(0, count, chunk):
            last = min(first + chunk, count) - 1
            chunk_start, chunk_end = start + first * step_ms, start + last * step_ms
            form = {
                "query": query,
                "start": _seconds(chunk_start),
                "end": _seconds(chunk_end),
                "step": _seconds(step_ms),
            }
            with _gc_paused():  # one answer is up to millions of small lists
                data = self._read(url, form, query=query)
                if data.get("resultType") != "matrix":
                    got = data.get("resultType")
                    raise QueryError(
                        f"{url}: expected a matrix result for query {query!r}, got {got!r}",
                        url=url,
                        query=query,
                    )
                for result in data["result"]:
                    metric = result["metric"]
                    key = tuple(sorted(metric.items()))
                    row = rows.get(key)
                    if row is None:
                        row = rows[key] = len(labels)
                        labels.append(dict(metric))
                    columns, values = _points(
                        result["values"],
                        start=start,
                        step_ms=step_ms,
                        first=first,
                        last=last,
                        url=url,
                        query=query,
                    )
                    pieces.append((row, columns, values))

        keys = list(rows)  # in row order: dicts keep insertion order
        order = sorted(range(len(labels)), key=keys.__getitem__)
        position = np.empty(len(labels), dtype=np.int64)
        position[order] = np.arange(len(labels))
        values = np.full((len(labels), count), np.nan)
        for row, columns, series_values in pieces:
            values[position[row], columns] = series_values
        timestamps = start + step_ms * np.arange(count, dtype=np.int64)
        return SeriesMatrix(tuple(labels[row] for row in order), timestamps, values)

    def series(self, match: str, *, start_ms: int, end_ms: int) -> list[dict[str, str]]:
        """Label sets of the series matching the selector ``match`` in ``[start, end]``.

        Cheaper than a query when only the series list is needed (``/api/v1/series``).

        Raises:
            QueryError: as for ``query_range``.
        """
        if end_ms < start_ms:
            raise ValueError(f"end_ms ({end_ms}) must not be before start_ms ({start_ms})")
        url = f"{self.settings.url}/api/v1/series"
        form = {"match[]": match, "start": _seconds(start_ms), "end": _seconds(end_ms)}
        return [dict(labels) for labels in self._read(url, form, query=match)]

    def sample_times(
        self, selector: str, *, start_ms: int, end_ms: int
    ) -> dict[frozenset[tuple[str, str]], set[int]]:
        """Timestamps of the raw samples stored in ``(start_ms, end_ms]`` per series of ``selector``.

        An instant query of ``selector[<end - start>ms]`` at ``end``: both Prometheus and
        VictoriaMetrics answer a range selector with the raw samples, not a resampled grid,
        which is what telling "already written" apart needs. ``nocache=1`` keeps
        VictoriaMetrics from answering from its response cache (an answer cached before a
        write would hide it; Prometheus ignores the parameter). Keys are label sets
        (``__name__`` included) as frozensets of items.

        Raises:
            QueryError: as for ``query_range``.
        """
        if end_ms <= start_ms:
            return {}
        url = f"{self.settings.url}/api/v1/query"
        query = f"{selector}[{end_ms - start_ms}ms]"
        data = self._read(url, {"query": query, "time": _seconds(end_ms), "nocache": "1"}, query=query)
        found: dict[frozenset[tuple[str, str]], set[int]] = {}
        for result in data.get("result") or ():
            stamps = {round(float(point[0]) * 1000) for point in result.get("values") or ()}
            found.setdefault(frozenset(result["metric"].items()), set()).update(stamps)
        return found

    def _read(self, url: str, form: dict[str, str], *, query: str) -> Any:
        """POST a read request (a form body: queries of any length), return ``data``."""
        response = self._send(QueryError, "POST", url, query=query, data=form)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as error:
            raise QueryError(
                f"{url} returned a body that is not JSON for query {query!r}: {self._scrub(response.text)!r}",
                url=url,
                status=response.status_code,
                query=query,
            ) from error
        if body.get("status") != "success":
            raise QueryError(
                f"{url} answered status {body.get('status')!r} for query {query!r}: "
                f"{self._scrub(str(body.get('error')))}",
                url=url,
                status=response.status_code,
                query=query,
            )
        for warning in body.get("warnings") or ():
            _log.warning("%s warns for query %r: %s", url, query, self._scrub(str(warning)))
        if body.get("isPartial"):  # VictoriaMetrics cluster: some storage nodes did not answer
            _log.warning("%s returned a partial result for query %r", url, query)
        return body["data"]

    # -- writing ---------------------------------------------------------------------

    def remote_write(self, series: SeriesMatrix) -> int:
        """Write every non-NaN cell of ``series`` through Prometheus remote write 1.0.

        Requests hold at most ``settings.write_batch_samples`` samples; a series longer
        than that is split over several requests. Batches are sent one after another,
        so a failure leaves the earlier batches written (writing the same samples again
        is harmless: same series, same timestamps).

        Returns:
            The number of samples written (NaN cells are skipped).

        Raises:
            RemoteWriteError: a label set has no ``__name__`` or an invalid label name
                (before anything is sent); the server rejected a batch (4xx, not retried:
                the message has status and the server's reason, e.g. out-of-order
                samples); or it stayed unreachable or answered 5xx after retries.
        """
        url = self.settings.remote_write_url
        present = ~np.isnan(series.values)
        counts = present.sum(axis=1)
        for row in np.flatnonzero(counts).tolist():
            _check_labels(series.labels[row], url=url)
        grid = _remote_write.TimestampGrid(series.timestamps)
        blobs: dict[int, bytes] = {}

        def blob(row: int) -> bytes:
            if row not in blobs:
                blobs[row] = _remote_write.encode_labels(series.labels[row])
            return blobs[row]

        written = 0
        for first_row, end_row, lo, hi in _batches(counts, self.settings.write_batch_samples):
            if lo is None:  # whole rows
                local_rows, columns = np.nonzero(present[first_row:end_row])
                has_samples = counts[first_row:end_row] > 0
                series_index = (np.cumsum(has_samples) - 1)[local_rows]  # dense over rows with samples
                rows = (np.flatnonzero(has_samples) + first_row).tolist()
                values = series.values[first_row + local_rows, columns]
            else:  # a part of one long row
                columns = np.flatnonzero(present[first_row])[lo:hi]
                series_index = np.zeros(len(columns), dtype=np.int64)
                rows = [first_row]
                values = series.values[first_row, columns]
            payload = _remote_write.encode_write_request(
                [blob(row) for row in rows], series_index, columns, grid, values
            )
            self._send(
                RemoteWriteError, "POST", url, content=_remote_write.compress(payload), headers=_WRITE_HEADERS
            )
            written += len(values)
        return written

    # -- plumbing --------------------------------------------------------------------

    def _send(
        self, error: type[TSDBError], method: str, url: str, *, query: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send; retry connection errors, timeouts, 5xx and 429; raise ``error`` otherwise."""
        attempts = self.settings.retries + 1
        tries = f"{attempts} attempt" + ("s" if attempts > 1 else "")
        suffix = f"; query: {query!r}" if query else ""
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                response = self._client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {self._scrub(str(exc))}"
                if attempt == attempts:
                    raise error(
                        f"could not connect to {url} after {tries} ({problem}){suffix}", url=url, query=query
                    ) from None
            else:
                if response.is_success:
                    return response
                status = response.status_code
                problem = f"HTTP {status}: {self._scrub(_server_message(response))}"
                if status < 500 and status != 429:
                    verb = "rejected the query" if error is QueryError else "rejected the write"
                    raise error(f"{url} {verb} with {problem}{suffix}", url=url, status=status, query=query)
                if attempt == attempts:
                    raise error(
                        f"{url} failed after {tries}, last with {problem}{suffix}",
                        url=url,
                        status=status,
                        query=query,
                    )
                retry_after = _retry_after(response)
            delay = backoff_delay(
                attempt, base=self.settings.backoff.total_seconds(), retry_after=retry_after
            )
            _log.warning(
                "%s %s failed (%s); retry %d/%d in %.2fs", method, url, problem, attempt, attempts - 1, delay
            )
            time.sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _scrub(self, text: str) -> str:
        """A server's text fit to quote: credentials and header values masked, cut short."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= _SERVER_TEXT_CHARS else f"{text[: _SERVER_TEXT_CHARS - 3]}..."

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _grid(*, start_ms: int, end_ms: int, step_ms: int) -> tuple[int, int]:
    """The aligned grid start and its number of points."""
    if step_ms <= 0:
        raise ValueError(f"step_ms must be positive, got {step_ms}")
    if end_ms < start_ms:
        raise ValueError(f"end_ms ({end_ms}) must not be before start_ms ({start_ms})")
    start = start_ms - start_ms % step_ms
    return start, (end_ms - start) // step_ms + 1


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a query answer is decoded.

    An answer of many series is millions of small lists and strings, none of them in a
    cycle; each allocation burst makes the collector rescan every live object, which
    made decoding cost grow faster than the answer (``benchmarks/results/scale_out.json``,
    ``fetch_decode``). Reference counting still frees everything.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _seconds(ms: int) -> str:
    """Milliseconds as the exact decimal seconds string both servers parse."""
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    return f"{sign}{ms // 1000}.{ms % 1000:03d}"


def _points(
    pairs: list[list[Any]], *, start: int, step_ms: int, first: int, last: int, url: str, query: str
) -> tuple[np.ndarray, np.ndarray]:
    """Grid columns and float values of one series' ``[[seconds, "value"], ...]``."""
    if not pairs:
        return np.empty(0, dtype=np.int64), np.empty(0)
    seconds, texts = zip(*pairs, strict=True)
    offset = np.rint(np.array(seconds, dtype=np.float64) * 1000).astype(np.int64) - start
    columns = offset // step_ms
    if np.any(offset % step_ms) or columns[0] < first or columns[-1] > last:
        bad = (start + offset)[(offset % step_ms != 0) | (columns < first) | (columns > last)][0]
        raise QueryError(
            f"{url} returned a point at {bad} ms, off the requested grid "
            f"(start {start + first * step_ms} ms, step {step_ms} ms) for query {query!r}",
            url=url,
            query=query,
        )
    return columns, np.fromiter(map(float, texts), dtype=np.float64, count=len(texts))


def backoff_delay(attempt: int, *, base: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): full jitter over a capped
    exponential, ``uniform(0, min(30, base * 2**(attempt-1)))``, but never less than
    the server's ``Retry-After`` (itself capped at 5 minutes)."""
    delay = random.uniform(0, min(base * 2 ** (attempt - 1), _MAX_BACKOFF_S))
    if retry_after is not None:
        delay = max(delay, min(retry_after, _MAX_RETRY_AFTER_S))
    return delay


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None if absent or bad."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _secrets(settings: TSDBSettings) -> list[str]:
    """The strings a server must never get to show back: credentials, header values, and
    the basic-auth header value; longest first, so a secret inside another is masked whole."""
    values = settings.secrets()
    if settings.username is not None and settings.password is not None:
        pair = f"{settings.username}:{settings.password.get_secret_value()}"
        values.append(base64.b64encode(pair.encode()).decode())
    return sorted(set(values), key=len, reverse=True)


def _server_message(response: httpx.Response) -> str:
    """The server's own reason: the ``error`` field of a Prometheus JSON error, else the text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        kind = str(body.get("errorType") or "")
        # Prometheus names the error class (bad_data); VictoriaMetrics repeats the status.
        return (
            f"{kind}: {body['error']}" if kind and kind != str(response.status_code) else str(body["error"])
        )
    text = response.text.strip()
    return text[: _SERVER_TEXT_CHARS * 4] if text else response.reason_phrase


@functools.lru_cache(maxsize=4096)
def _valid_label_name(name: str) -> bool:
    """Kept per name: a window checks every label of each of its series, and names repeat."""
    return _LABEL_NAME.fullmatch(name) is not None


def _check_labels(labels: Mapping[str, str], *, url: str) -> None:
    if not labels.get("__name__"):
        raise RemoteWriteError(f"cannot write series {dict(labels)}: it has no __name__ label", url=url)
    for name in labels:
        if not _valid_label_name(name):
            raise RemoteWriteError(
                f"cannot write series {dict(labels)}: {name!r} is not a valid label name", url=url
            )


def _batches(counts: np.ndarray, limit: int) -> Iterator[tuple[int, int, int | None, int | None]]:
    """Split rows into requests of at most ``limit`` samples.

    Yields ``(first_row, end_row, None, None)`` for a run of whole rows, or
    ``(row, row + 1, lo, hi)`` for samples ``lo:hi`` of one row longer than ``limit``.
    """
    first, total = 0, 0
    for row, count in enumerate(counts.tolist()):
        if count > limit:
            if total:
                yield first, row, None, None
            for lo in range(0, count, limit):
                yield row, row + 1, lo, min(lo + limit, count)
            first, total = row + 1, 0
            continue
        if total + count > limit:
            yield first, row, None, None
            first, total = row, 0
        total += count
    if total:
        yield first, len(counts), None, None
