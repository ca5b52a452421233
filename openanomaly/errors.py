"""The exceptions OpenAnomaly raises, one tree so callers can catch at the level they need.

::

    OpenAnomalyError
    ├── ConfigError              bad YAML / settings: names file, pipeline and field
    │   ├── ConfigValidationError  several problems in one file, one ConfigError each
    │   │   └── PipelineInvalid    (pipeline_admin) a definition sent over the API or the playground
    │   └── InvalidPipelineName    a name no pipeline can have ("..", "a/b"); both stores refuse it alike
    ├── UsageError               a command-line argument is wrong (bad date, unknown pipeline)
    ├── RequestError             (serve.schemas; also a ValueError) an API request is refused
    ├── PlaygroundInputError     a playground form field is wrong; names the field
    ├── TSDBError                carries url (and status, query where known)
    │   ├── QueryError           a read failed (bad PromQL, unreachable server, 5xx after retries)
    │   └── RemoteWriteError     a write failed (4xx rejected, or 5xx/connection after retries)
    ├── DataError                the data cannot be scored (no series, all-NaN series, too short)
    │   └── NoSeries             the query returned no series at all
    │       └── NoSamples        its series hold no sample in the window (yet)
    ├── ModelError               a model could not be loaded or returned a broken forecast
    │   ├── UnknownModelSpec     the spec string names no known adapter
    │   └── ForecastRejected     (serve.forecaster) the model cannot forecast a request's series (422)
    ├── ArtifactError            the artifact store could not read or write a fitted model
    │   └── ArtifactNotFound     the key holds no artifact (the store itself answered)
    ├── PipelineNotFound         the pipeline store holds no pipeline of that name
    ├── PreconditionFailed       a conditional pipeline edit lost: it changed since it was read (HTTP 412)
    ├── SchedulerUnavailable     the HTTP API found no scheduler actor (503)
    ├── RayUnavailable           Ray did not start (a local cluster) or answer (an address) in time
    ├── NodeLost                 a node left the cluster mid-job; the job was stopped, the window is retried
    └── WindowTimeout            a scheduled window or fit ran past its time limit

A class shown with a module in brackets lives beside the code that raises it; every
exception class anywhere in the package derives from :class:`OpenAnomalyError`
(``tests/test_errors.py`` walks the package to keep it so).

Every message names the input at fault; the same values are kept as attributes so
programs need not parse messages.

Every one of them pickles with its attributes (:meth:`OpenAnomalyError.__reduce__`):
Ray ships exceptions between processes by pickling, and one that cannot be rebuilt
reaches the caller as ``UnserializableException`` with the cause lost.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArtifactError",
    "ArtifactNotFound",
    "ConfigError",
    "ConfigValidationError",
    "DataError",
    "InvalidPipelineName",
    "ModelError",
    "NoSamples",
    "NoSeries",
    "NodeLost",
    "OpenAnomalyError",
    "PipelineNotFound",
    "PlaygroundInputError",
    "PreconditionFailed",
    "QueryError",
    "RayUnavailable",
    "RemoteWriteError",
    "SchedulerUnavailable",
    "TSDBError",
    "UnknownModelSpec",
    "UsageError",
    "WindowTimeout",
]


def _rebuild(cls: type[OpenAnomalyError], args: tuple[Any, ...]) -> OpenAnomalyError:
    """An instance of ``cls`` with ``args`` set, without calling ``cls.__init__``."""
    return cls.__new__(cls, *args)


class OpenAnomalyError(Exception):
    """Base of every error OpenAnomaly raises on purpose (user or environment errors)."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as (class, message args, attributes), not by calling ``__init__`` again.

        The default (``cls(*self.args)``) fails for subclasses whose ``__init__`` has
        keyword-only arguments (``TSDBError(message, url=…)``), which is what made Ray
        report ``UnserializableException`` instead of the error.
        """
        return _rebuild, (type(self), self.args), self.__dict__


class ConfigError(OpenAnomalyError):
    """Invalid configuration.

    Attributes:
        source: file path (or other origin) of the configuration.
        pipeline: pipeline name, when the error is inside one.
        field: dotted field path, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        pipeline: str | None = None,
        field: str | None = None,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.field = field
        self.message = message  # without the where-prefix, for callers that show ``field`` apart
        where = [
            part
            for part in (
                source,
                f"pipeline {pipeline!r}" if pipeline else None,
                f"field {field!r}" if field else None,
            )
            if part
        ]
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class ConfigValidationError(ConfigError):
    """Several problems in one file; ``errors`` holds one :class:`ConfigError` per problem.

    The message lists them all, one per line; ``source``/``pipeline``/``field`` are the
    first problem's.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        Exception.__init__(self, "\n".join(str(error) for error in errors))
        self.source, self.pipeline, self.field = first.source, first.pipeline, first.field


class InvalidPipelineName(ConfigError):
    """A name no pipeline can have (``..``, ``a/b``, empty, too long); ``field`` is ``name``.

    Raised by every pipeline store before the name becomes a file entry or an S3 key,
    so the stores cannot disagree on it (one made a pipeline ``..``, the other a 500).
    """

    def __init__(self, name: str, *, source: str | None = None) -> None:
        self.name = name
        shown = name if len(name) <= 60 else name[:57] + "..."
        super().__init__(
            f"{shown!r} is not a pipeline name: use letters, digits, '_', '.' and '-' (not dots alone)",
            source=source,
            field="name",
        )


class UsageError(OpenAnomalyError):
    """A command-line argument is wrong (bad date, unknown pipeline, bad --out suffix)."""


class PlaygroundInputError(OpenAnomalyError):
    """A playground form field is wrong. ``field`` names it (as labelled in the form)."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class TSDBError(OpenAnomalyError):
    """A TSDB request failed. Carries the URL, the HTTP status (if any) and the query."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        query: str | None = None,
    ) -> None:
        self.url = url
        self.status = status
        self.query = query
        super().__init__(message)


class QueryError(TSDBError):
    """Reading from the TSDB failed."""


class RemoteWriteError(TSDBError):
    """Writing to the TSDB through remote write failed."""


class DataError(OpenAnomalyError):
    """The data returned for a pipeline cannot be scored (empty, all-NaN, too short)."""

    def __init__(self, message: str, *, pipeline: str | None = None) -> None:
        self.pipeline = pipeline
        super().__init__(f"pipeline {pipeline!r}: {message}" if pipeline else message)


class NoSeries(DataError):
    """The pipeline's query returned no series: a state to show (``no_data``), not a crash."""


class NoSamples(NoSeries):
    """The series exist but hold no sample in the window (a TSDB outage, a scrape gap): the
    window stays due (``no_data``) until samples arrive or it is reported as a gap."""


class ModelError(OpenAnomalyError):
    """A model could not be loaded, fitted, or returned an inconsistent forecast."""

    def __init__(self, message: str, *, spec: str | None = None) -> None:
        self.spec = spec
        super().__init__(f"model {spec!r}: {message}" if spec else message)


class UnknownModelSpec(ModelError):
    """The model spec names no registered adapter or model."""

    def __init__(self, spec: str, known: list[str]) -> None:
        self.known = known
        super().__init__(f"unknown model; known: {', '.join(known)}", spec=spec)


class ArtifactError(OpenAnomalyError):
    """The artifact store failed to read or write. Carries the key."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"artifact {key!r}: {message}" if key else message)


class ArtifactNotFound(ArtifactError):
    """The store answered, and the key holds nothing (unlike an outage, which is an ArtifactError)."""


class PipelineNotFound(OpenAnomalyError):
    """The pipeline store holds no pipeline of that name (HTTP 404). Carries the name and the store."""

    def __init__(self, name: str, *, source: str) -> None:
        self.name = name
        self.source = source
        super().__init__(f"pipeline {name!r}: not found in {source}")


class PreconditionFailed(OpenAnomalyError):
    """A conditional edit of a pipeline lost (HTTP 412): someone changed it since the caller read it.

    Attributes:
        name: the pipeline.
        expected: the etag the caller sent (``If-Match``), or None for a create-only put
            (``If-None-Match: *``).
        current: the stored etag now, or None when the pipeline does not exist.
    """

    def __init__(self, name: str, *, expected: str | None, current: str | None) -> None:
        self.name = name
        self.expected = expected
        self.current = current
        if expected is None:
            problem = f"already exists (etag {current})"
        elif current is None:
            problem = f"does not exist (If-Match etag {expected})"
        else:
            problem = f"changed since it was read (If-Match etag {expected}, current etag {current})"
        super().__init__(f"pipeline {name!r}: {problem}")


class SchedulerUnavailable(OpenAnomalyError):
    """The pipeline endpoints were called but no scheduler actor is running (HTTP 503)."""


class RayUnavailable(OpenAnomalyError):
    """Ray did not start or could not be reached, after every attempt.

    Attributes:
        address: the address given to ``ray.init`` (``local``: a cluster of our own).
        attempts: how many starts were tried.
    """

    def __init__(self, message: str, *, address: str, attempts: int) -> None:
        self.address = address
        self.attempts = attempts
        super().__init__(message)


class NodeLost(OpenAnomalyError):
    """A node a Ray Data job ran on left the cluster mid-job: the job was stopped, and the
    scheduler runs the window again on the nodes that are left."""


class WindowTimeout(OpenAnomalyError):
    """A window or fit did not finish within its time limit (e.g. its model actor could not be placed)."""
