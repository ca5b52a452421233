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
    errors.SchedulerUnavailable("no scheduler"),
    errors.RayUnavailable("Ray did not start", address="local", attempts=3),
    errors.PipelineNotFound("cpu", source="pipelines.yaml"),
    errors.PreconditionFailed("cpu", expected="0123456789abcdef", current="fedcba9876543210"),
]


def test_every_exception_is_in_errors_and_covered() -> None:
    defined = {
        cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, BaseException)
    }
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


def test_no_exception_class_outside_errors_module() -> None:
    """A domain exception defined elsewhere would dodge the tree and the pickling test."""
    import pkgutil
    from importlib import import_module

    import openanomaly

    light = (
        "openanomaly.cli",
        "openanomaly.core.config",
        "openanomaly.configstore.files",
        "openanomaly.io.tsdb",
    )
    modules = [import_module(name) for name in light]
    modules += [
        import_module(info.name)
        for info in pkgutil.walk_packages(openanomaly.__path__, "openanomaly.")
        if info.name.startswith("openanomaly.models.") and info.name != "openanomaly.models.tiny"
    ]
    for module in modules:
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                pytest.fail(f"{module.__name__}.{name} is an exception outside openanomaly.errors")


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
