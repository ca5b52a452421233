"""Every OpenAnomaly exception lives in errors.py and survives pickling (Ray ships them so)."""

from __future__ import annotations

import inspect
import pickle

import pytest

from openanomaly import errors

EXAMPLES: list[errors.OpenAnomalyError] = [
    errors.OpenAnomalyError("plain"),
    errors.ConfigError("bad", source="p.yaml", pipeline="cpu", field="pipelines[0].step"),
    errors.ConfigValidationError(
        [errors.ConfigError("one", source="p.yaml"), errors.ConfigError("two", source="p.yaml", pipeline="x")]
    ),
    errors.InvalidPipelineName("..", source="pipelines.yaml"),
    errors.UsageError("--start 'x' is not a time"),
    errors.PlaygroundInputError("not a URL", field="TSDB URL"),
    errors.TSDBError("boom", url="http://127.0.0.1:1", status=500, query="up"),
    errors.QueryError("bad PromQL", url="http://127.0.0.1:1/api/v1/query_range", status=400, query="up{"),
    errors.RemoteWriteError("rejected", url="http://127.0.0.1:1/api/v1/write", status=400),
    errors.DataError("no series", pipeline="cpu"),
    errors.ModelError("no weights", spec="chronos:/models/x"),
    errors.UnknownModelSpec("nope", ["default", "mad"]),
    errors.ArtifactError("unreachable", key="cpu/model.pkl"),
    errors.ArtifactNotFound("no such artifact", key="cpu/abc/0000000000001"),
    errors.NoSeries("query 'up' returned no series", pipeline="cpu"),
    errors.NoSamples("window (a, b]: its 2 series hold no sample", pipeline="cpu"),
    errors.WindowTimeout("the model actor did not answer in time"),
    errors.NodeLost("pipeline 'p' window job: node abc left the cluster; the job was stopped"),
    errors.SchedulerUnavailable("no scheduler"),
    errors.RayUnavailable("Ray did not start", address="local", attempts=3),
    errors.PipelineNotFound("cpu", source="pipelines.yaml"),
    errors.PreconditionFailed("cpu", expected="0123456789abcdef", current="fedcba9876543210"),
]


def _defined_in_errors() -> set[type[BaseException]]:
    return {cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, BaseException)}


def test_every_exception_is_in_errors_and_covered() -> None:
    defined = _defined_in_errors()
    assert defined == {type(example) for example in EXAMPLES}
    assert all(issubclass(cls, errors.OpenAnomalyError) for cls in defined)
    assert {cls.__name__ for cls in defined} <= set(errors.__all__)


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_pickle_round_trip_keeps_message_and_attributes(error: errors.OpenAnomalyError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert {k: v for k, v in vars(copy).items() if k != "errors"} == {
        k: v for k, v in vars(error).items() if k != "errors"
    }
    if isinstance(error, errors.ConfigValidationError):
        assert [str(e) for e in copy.errors] == [str(e) for e in error.errors]


def _package_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in any module of the package (``__main__`` modules run, so not them)."""
    import pkgutil
    from importlib import import_module

    import openanomaly

    found = []
    for info in pkgutil.walk_packages(openanomaly.__path__, "openanomaly."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = import_module(info.name)
        found += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__
        ]
    return found


def test_every_exception_in_the_package_is_in_the_tree() -> None:
    """One defined anywhere that does not derive from OpenAnomalyError dodges ``except
    OpenAnomalyError`` and the pickling that Ray relies on; the tree in errors.py names the
    few that live outside it."""
    found = _package_exceptions()
    assert set(_defined_in_errors()) < set(found)
    strays = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in found
        if not issubclass(cls, errors.OpenAnomalyError)
    ]
    assert not strays, f"exceptions outside the errors.py tree: {strays}"
    public_elsewhere = {
        cls.__name__ for cls in found if cls.__module__ != errors.__name__ and cls.__name__[0] != "_"
    }
    assert public_elsewhere, "the walk found no exception outside errors.py"
    missing = sorted(name for name in public_elsewhere if name not in (errors.__doc__ or ""))
    assert not missing, f"errors.py's tree does not name {missing}"


def test_request_error_pickles_with_its_field_and_status() -> None:
    from openanomaly.serve.schemas import RequestError

    error = RequestError("9 points, the limit is 8", field="series[0].values", status=413)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.field, copy.status, copy.reason) == (
        RequestError,
        str(error),
        "series[0].values",
        413,
        "9 points, the limit is 8",
    )
    assert isinstance(copy, ValueError)


def test_ray_task_error_keeps_the_cause(ray_cluster: None) -> None:
    """The scheduler sees the QueryError (with its url), not UnserializableException."""
    import ray

    @ray.remote(num_cpus=0)
    def fail() -> None:
        raise errors.QueryError("bad PromQL", url="http://127.0.0.1:1/q", status=400, query="up{")

    with pytest.raises(errors.QueryError) as info:
        ray.get(fail.remote())
    assert info.value.url == "http://127.0.0.1:1/q"
    assert info.value.status == 400
    assert info.value.query == "up{"
