"""The HTTP API: a FastAPI ingress deployment in front of one forecaster deployment per model.

``serve run serve_config.yaml`` imports ``build_app`` (a Serve application builder) with
the config's ``args``: the models to deploy and the request limits. Each model becomes a
``ForecasterDeployment`` named ``Forecaster-<name>`` (``deployments:`` entries size and
place it); the ingress holds a handle per model and picks one by the request's ``model``.

The ingress stays a thin shim: it validates requests, forwards contexts to the batched
deployment, and for ``/v1/detect`` runs ``core.detect.score_range`` (the scheduled
pipelines' no-look-ahead code) with the deployment handle as its forecaster.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint
annotations at run time, and Serve's class-based views need them as real types.

Endpoints: ``POST /v1/forecast``, ``POST /v1/detect``, ``GET /v1/models``,
``/v1/pipelines…`` (list, CRUD, versions and manual runs of the scheduler's pipelines,
``serve.pipelines_api``), ``GET /healthz``, ``GET /metrics``, OpenAPI at ``/docs``, and
``/login`` / ``/logout`` (the playground's browser sessions, ``serve.login``).
"""

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ValidationError,
)
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from openanomaly.configstore.admin import PipelineAdmin, PipelineInvalid, create_starter_file
from openanomaly.core.config import Pipeline
from openanomaly.core.detect import score_range
from openanomaly.errors import (
    ConfigError,
    DataError,
    InvalidPipelineName,
    ModelError,
    PipelineNotFound,
    PreconditionFailed,
    SchedulerUnavailable,
)
from openanomaly.models.trust import models_root
from openanomaly.runtime.scheduler_actor import ensure_scheduler
from openanomaly.serve.bodies import parse_body
from openanomaly.serve.forecaster import (
    ForecasterDeployment,
    ForecastItem,
    ForecastRejected,
    ForecastReply,
    HandleForecaster,
)
from openanomaly.serve.guard import (
    TOKEN_ENV,
    Guard,
    GuardSettings,
    error_body,
    serve_host,
    warn_if_open,
)
from openanomaly.serve.login import router as login_router
from openanomaly.serve.metrics import CONTENT_TYPE, ObserveRequests, ServeMetrics
from openanomaly.serve.openapi import body_schema, openapi_document
from openanomaly.serve.pipelines_api import router as pipelines_router
from openanomaly.serve.progress import announce_ready, app_summary, say, scheduler_summary
from openanomaly.serve.quiet import quiet_cancelled_requests
from openanomaly.serve.schemas import (
    DetectRequest,
    DetectResponse,
    DetectSeries,
    ErrorBody,
    ForecastRequest,
    ForecastResponse,
    ForecastSeries,
    Limits,
    ModelInfo,
    ModelsResponse,
    RequestError,
    clip,
    detect_matrix,
    forecast_timestamps,
    values_array,
)
from openanomaly.serve.settings import AppSettings, SchedulerLink

__all__ = [
    "TOKEN_ENV",
    "Ingress",
    "SchedulerUnavailable",
    "build",
    "build_app",
    "fastapi_app",
]

_log = logging.getLogger(__name__)

fastapi_app = FastAPI(
    title="OpenAnomaly",
    summary="Forecast and anomaly-score time series with batched models on Ray Serve.",
    version="0.1.0",
)
fastapi_app.include_router(login_router)  # /login, /logout: the playground's browser sessions
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in {
        401: "Missing or wrong bearer token (when the API has one)",
        403: "The read-only token cannot change anything",
        413: "A size limit is exceeded (body, series, points, response); the field is named",
        422: "The request does not validate; the field is named",
        500: "The model failed on the batch",
    }.items()
}


def _json_floats(values: np.ndarray) -> list[Any]:
    """Float array → nested lists with NaN as None (JSON has no NaN)."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array), array, None).tolist()


def _error(status: int, message: str, *, field: str | None = None, kind: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(status, message, field=field, kind=kind))


def _cause(error: BaseException) -> BaseException:
    """The exception raised inside a replica, out of Ray's ``RayTaskError`` wrapper.

    A ``ModelError`` raised in the forecaster arrives as a ``RayTaskError`` subclass
    whose ``str()`` is a Ray traceback (PIDs, node IP, actor id, paths); its ``cause``
    is the original exception with its own one-line message.
    """
    from ray.exceptions import RayTaskError

    while isinstance(error, RayTaskError) and error.cause is not None:
        error = error.cause
    return error


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    # Only path parameters reach here: bodies are parsed by parse_request.
    first = (error.errors() or [{"loc": ("body",), "msg": "invalid request"}])[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "path", "query")]
    field = ".".join(loc) or "body"
    return _error(
        422, f"{field}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')}", field=field
    )


@fastapi_app.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    response = _error(error.status_code, str(error.detail), kind=None, field=None)
    response.headers.update(error.headers or {})
    if error.status_code == 405:
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (RFC 9110: a 405 carries ``Allow``).

    Starlette's own ``Allow`` names only the first route whose path matched, and
    ``/v1/pipelines/{name}`` is three routes (GET, PUT, DELETE).
    """
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Match

    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):  # routers included, flattened
        match, _ = route.matches(request.scope)  # PARTIAL: the path matches, the method does not
        if match != Match.NONE and route.methods:
            methods |= set(route.methods)
    return sorted(methods)


@fastapi_app.exception_handler(RequestError)
async def _request_error(_: Request, error: RequestError) -> JSONResponse:
    return _error(error.status, str(error), field=error.field)


@fastapi_app.exception_handler(DataError)
async def _data_error(_: Request, error: DataError) -> JSONResponse:
    return _error(422, str(_cause(error)), field="series", kind="data_error")


@fastapi_app.exception_handler(ConfigError)
async def _config_error(_: Request, error: ConfigError) -> JSONResponse:
    # A pipeline disabled by a bad config, asked to run: the state forbids it, not the request.
    return _error(409, str(_cause(error)))


@fastapi_app.exception_handler(InvalidPipelineName)
async def _invalid_name(_: Request, error: InvalidPipelineName) -> JSONResponse:
    return _error(422, error.message, field="name", kind="invalid_request")


@fastapi_app.exception_handler(PipelineInvalid)
async def _pipeline_invalid(_: Request, error: PipelineInvalid) -> JSONResponse:
    # Every problem, each with its field; "message"/"field" are the first one's, as everywhere.
    first = error.problems[0]
    body = error_body(422, first.message, field=first.field, kind="invalid_pipeline")
    body["problems"] = [{"field": p.field, "message": p.message} for p in error.problems]
    return JSONResponse(status_code=422, content=body)


@fastapi_app.exception_handler(PreconditionFailed)
async def _precondition_failed(_: Request, error: PreconditionFailed) -> JSONResponse:
    return _error(412, str(error), field="If-Match", kind="precondition_failed")


@fastapi_app.exception_handler(PipelineNotFound)
async def _pipeline_not_found(_: Request, error: PipelineNotFound) -> JSONResponse:
    return _error(404, str(error), field="name", kind="not_found")


@fastapi_app.exception_handler(ModelError)
async def _model_error(_: Request, error: ModelError) -> JSONResponse:
    cause = _cause(error)
    if isinstance(cause, ForecastRejected):
        return _error(422, str(cause), field="series", kind="model_rejected_input")
    return _error(500, f"model failed: {cause}", kind="model_error")


@fastapi_app.exception_handler(Exception)
async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    cause = _cause(error)
    if isinstance(cause, DataError | ModelError):  # wrapped in something else by Ray
        return await (_data_error if isinstance(cause, DataError) else _model_error)(request, cause)
    _log.error("%s %s failed", request.method, request.url.path, exc_info=cause)
    return _error(500, f"internal error ({type(cause).__name__}); see the ingress log")


@fastapi_app.exception_handler(SchedulerUnavailable)
async def _no_scheduler(_: Request, error: SchedulerUnavailable) -> JSONResponse:
    return _error(503, str(error))


fastapi_app.include_router(pipelines_router, responses=_ERRORS)

fastapi_app.add_middleware(ObserveRequests)
# Added last, so outermost: a request is refused before the body is read or routed.
fastapi_app.add_middleware(Guard)


fastapi_app.openapi = functools.partial(openapi_document, fastapi_app)  # type: ignore[method-assign]

_Body = TypeVar("_Body", ForecastRequest, DetectRequest)


async def _parse(model: type[_Body], request: Request, limits: Limits) -> _Body:
    """Read and validate a body off the event loop (a thread, or a process for a large
    one): it must not stall ``/healthz`` and other requests while pydantic walks it."""
    return await parse_body(model, await request.body(), limits)


async def _rendered(build: Callable[[], BaseModel]) -> Response:
    """Build and serialise a reply in a worker thread: 1000 series took the event loop
    50-80 ms (``/healthz`` waited) when FastAPI rendered them. ``response_model`` still
    documents the shape."""
    body = await asyncio.to_thread(lambda: build().model_dump_json().encode())
    return Response(body, media_type="application/json")


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(fastapi_app)
class Ingress:
    """Experimental. The FastAPI app as a Serve deployment; one handle per model deployment."""

    def __init__(
        self,
        forecasters: dict[str, DeploymentHandle],
        *,
        default_model: str,
        limits: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        playground: bool = False,
    ) -> None:
        quiet_cancelled_requests()  # closed browser tabs are not "Request failed." tracebacks
        # Only names and limits, not the models' configs: a user_config change then
        # leaves the ingress untouched (no restart), and replies carry the live spec.
        self.default_model = default_model
        self.limits = Limits.model_validate(limits)
        self.forecasters = forecasters
        self.metrics = ServeMetrics()
        guard = GuardSettings.from_environ(max_body_bytes=self.limits.max_body_bytes)
        warn_if_open(guard.token, serve_host() if guard.token is None else "")
        fastapi_app.state.guard = guard
        fastapi_app.state.limits = self.limits
        fastapi_app.state.models = sorted(forecasters)
        fastapi_app.openapi_schema = None  # rebuilt with these limits on the next /openapi.json
        fastapi_app.openapi = functools.partial(openapi_document, fastapi_app)  # type: ignore[method-assign]
        fastapi_app.state.metrics = self.metrics
        self.scheduler = SchedulerLink.model_validate(scheduler or {})
        self.scheduler_error: str | None = None
        self._admin: PipelineAdmin | None = None
        fastapi_app.state.scheduler = self._scheduler_actor
        fastapi_app.state.pipelines = None
        starter: threading.Thread | None = None
        if self.scheduler.pipelines is not None:
            create_starter_file(self.scheduler.pipelines)
            fastapi_app.state.pipelines = self._pipeline_admin
            # In the background and never fatal: the API must come up (and stay up through a
            # rolling update) whatever the pipelines file or the cluster says.
            starter = threading.Thread(target=self._start_scheduler, name="start-scheduler", daemon=True)
            starter.start()
        if playground:
            from openanomaly.ui import mount_playground

            # Mounted per replica, after serve.ingress built the routes: Gradio is heavy,
            # so only an app that asks for it pays the import. The Guard middleware
            # applies the API's tokens to it, and the /login session cookie.
            try:
                mount_playground(
                    fastapi_app,
                    path="/playground",
                    config=self.scheduler.pipelines,
                    admin=self._pipeline_admin if self.scheduler.pipelines is not None else None,
                    writer=self._playground_writer,
                    trigger=self._trigger,
                    sign_out=fastapi_app.state.guard.auth_on,
                )
            except ConfigError as error:  # a bad pipelines file must not take the API down
                logging.getLogger(__name__).error("playground not mounted: %s", error)
                message = f"the playground is off: the pipelines file does not load ({error})"

                @fastapi_app.get("/playground{rest:path}", include_in_schema=False)
                async def playground_off(rest: str) -> JSONResponse:
                    return _error(503, message, kind="playground_unavailable")

        say(f"ingress: up; waiting for the model deployments ({', '.join(forecasters)}) to load")
        announce_ready(playground=playground, after=starter)

    def _start_scheduler(self) -> None:
        import ray

        path = self.scheduler.pipelines
        assert path is not None
        say(f"ingress: starting the scheduler on {path}")
        try:
            scheduler = ensure_scheduler(path, name=self.scheduler.name, namespace=self.scheduler.namespace)
            say(scheduler_summary(path, ray.get(scheduler.status.remote())))
        except Exception as error:  # shown on /v1/pipelines; the API itself keeps serving
            self.scheduler_error = f"{type(error).__name__}: {error}"
            logging.getLogger(__name__).exception("could not start the scheduler")

    def _pipeline_admin(self) -> PipelineAdmin:
        """The pipelines' admin, opened on first use and retried until the file's store opens.

        Raises:
            SchedulerUnavailable: the pipelines file does not load (the message says why).
        """
        if self._admin is None:
            import ray

            assert self.scheduler.pipelines is not None
            try:
                self._admin = PipelineAdmin(
                    self.scheduler.pipelines,
                    status=lambda: ray.get(self._scheduler_actor().status.remote()),
                    models_root=models_root(),
                )
            except ConfigError as error:
                raise SchedulerUnavailable(f"pipelines cannot be managed: {error}") from None
        return self._admin

    @staticmethod
    def _playground_writer(headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
        """Who may change pipelines from the playground: its login's principal, if it may write."""
        principal = fastapi_app.state.guard.principal_for(headers, cookies)
        return principal.name if principal is not None and principal.can_write else None

    def _trigger(self, name: str) -> Any:
        import ray

        return ray.get(self._scheduler_actor().trigger.remote(name))

    def _scheduler_actor(self) -> Any:
        """The scheduler actor, or a 503 that says how to start one."""
        import ray

        try:
            return ray.get_actor(self.scheduler.name, namespace=self.scheduler.namespace)
        except ValueError:
            why = f" (starting it failed: {self.scheduler_error})" if self.scheduler_error else ""
            raise SchedulerUnavailable(
                f"no scheduler {self.scheduler.name!r} is running in namespace "
                f"{self.scheduler.namespace!r}{why}: start it with `openanomaly scheduler "
                "-c pipelines.yaml`, or set args.scheduler.pipelines in serve_config.yaml"
            ) from None

    def _handle(self, name: str | None, request: Request) -> tuple[str, DeploymentHandle]:
        model = name or self.default_model
        if model not in self.forecasters:
            known = sorted(self.forecasters)
            raise RequestError(f"unknown model {clip(model)}; deployed: {known}", field="model")
        request.state.model = model
        return model, self.forecasters[model]

    @fastapi_app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness: the ingress answers (model replicas have their own health checks)."""
        return {"status": "ok", "models": sorted(self.forecasters)}

    @fastapi_app.get("/v1/models", response_model=ModelsResponse, responses=_ERRORS)
    async def models(self) -> ModelsResponse:
        """The deployed models, their specs and batching settings."""
        names = list(self.forecasters)
        infos = await asyncio.gather(*(self.forecasters[n].info.remote() for n in names))
        return ModelsResponse(
            models=[
                ModelInfo(
                    name=name,
                    spec=info["spec"],
                    device=info["device"],
                    max_batch_size=info["max_batch_size"],
                    batch_wait_timeout_s=info["batch_wait_timeout_s"],
                    default=name == self.default_model,
                )
                for name, info in zip(names, infos, strict=True)
            ]
        )

    @fastapi_app.post(
        "/v1/forecast",
        response_model=ForecastResponse,
        responses=_ERRORS,
        openapi_extra=body_schema(ForecastRequest),
    )
    async def forecast(self, request: Request) -> Response:
        """Forecast ``horizon`` steps of every series: median plus the requested quantiles.

        The series of one request go to the model as one block; concurrent requests are
        batched together by the model deployment.
        """
        body = await _parse(ForecastRequest, request, self.limits)
        name, handle = self._handle(body.model, request)
        contexts = await asyncio.to_thread(values_array, body.series)  # 10^6 values: ~50 ms
        step_s = body.step_ms / 1000 if body.step_ms is not None else None
        item = ForecastItem(contexts, body.horizon, tuple(body.quantiles), step_s)
        reply: ForecastReply = await handle.forecast.remote(item)
        result, spec = reply.forecast, reply.spec
        self.metrics.series.labels("/v1/forecast", name).inc(len(body.series))
        return await _rendered(
            lambda: ForecastResponse(
                model=name,
                spec=spec,
                quantile_levels=result.levels.tolist(),
                series=[
                    ForecastSeries(
                        id=s.id if s.id is not None else str(i),
                        median=_json_floats(result.median[i]),
                        quantiles=_json_floats(result.quantiles[i].T),
                        timestamps_ms=forecast_timestamps(s, body.step_ms, body.horizon),
                    )
                    for i, s in enumerate(body.series)
                ],
            )
        )

    @fastapi_app.post(
        "/v1/detect",
        response_model=DetectResponse,
        responses=_ERRORS,
        openapi_extra=body_schema(DetectRequest),
    )
    async def detect(self, request: Request) -> Response:
        """Score the last ``score_last`` points of every series, each against a forecast
        made from the ``context_length`` points before it (rolling, no look-ahead).

        Runs ``openanomaly.core.detect.score_range``, what every scheduled window runs: the
        request's (series, chunk) contexts go to the model in batched calls.
        """
        body = await _parse(DetectRequest, request, self.limits)
        name, handle = self._handle(body.model, request)
        matrix, step = await asyncio.to_thread(detect_matrix, body)
        info = await handle.info.remote()
        spec = info["spec"]
        try:
            pipeline = Pipeline(
                name="api",
                query="api",
                step=timedelta(milliseconds=step),
                model={"spec": spec, "alias": name},
                schedule={
                    "infer_every": timedelta(milliseconds=step * body.infer_every),
                    "context": timedelta(milliseconds=step * body.context_length),
                },
                scoring=body.scoring,
            )
        except ValidationError as error:  # e.g. a schedule the pipeline model refuses
            problem = error.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(part) for part in problem["loc"]) or "body"
            raise RequestError(problem["msg"].removeprefix("Value error, "), field=field) from None
        t = matrix.timestamps
        start_ms = int(t[-body.score_last - 1]) if body.score_last < len(t) else int(t[0]) - step
        result = await asyncio.to_thread(
            score_range,
            matrix,
            pipeline,
            HandleForecaster(handle),
            start_ms=start_ms,
            end_ms=int(t[-1]),
        )
        self.metrics.series.labels("/v1/detect", name).inc(len(body.series))
        self.metrics.points_scored.labels(name).inc(result.points_scored)
        with np.errstate(invalid="ignore"):
            flagged = result.anomaly_score > 1
        self.metrics.anomalies.labels(name).inc(int(flagged.sum()))
        has_ts = body.series[0].timestamps_ms is not None
        return await _rendered(
            lambda: DetectResponse(
                model=name,
                spec=spec,
                series=[
                    DetectSeries(
                        id=s.id if s.id is not None else str(i),
                        anomaly_score=_json_floats(result.anomaly_score[i]),
                        yhat=_json_floats(result.yhat[i]),
                        yhat_lower=_json_floats(result.yhat_lower[i]),
                        yhat_upper=_json_floats(result.yhat_upper[i]),
                        timestamps_ms=result.timestamps.tolist() if has_ts else None,
                        anomalies=np.flatnonzero(flagged[i]).tolist(),
                    )
                    for i, s in enumerate(body.series)
                ],
            )
        )

    @fastapi_app.get("/metrics", response_class=Response)
    async def prometheus(self) -> Response:
        """Prometheus text: requests, latencies, series and points scored, batch sizes,
        and the scheduler's per-pipeline metrics when one is running."""
        names = list(self.forecasters)
        stats = await asyncio.gather(*(self.forecasters[n].stats.remote() for n in names))
        self.metrics.batches.update(dict(zip(names, stats, strict=True)))
        text = self.metrics.render()
        # No scheduler: the API alone is a valid deployment, so no scheduler metrics.
        with contextlib.suppress(SchedulerUnavailable):
            text += (await self._scheduler_actor().metrics.remote()).encode()
        return Response(content=text, media_type=CONTENT_TYPE)


def build(
    settings: AppSettings,
    *,
    ingress_options: dict[str, Any] | None = None,
    forecaster_options: dict[str, Any] | None = None,
) -> serve.Application:
    """Bind the app: one ``Forecaster-<name>`` deployment per model plus the ingress.

    A forecaster takes twice its ``max_batch_size`` at once: a batch fills while one runs.

    Args:
        ingress_options: extra ``.options()`` for the ingress (tests: ``num_cpus``,
            ``runtime_env``); serve_config.yaml ``deployments:`` entries override too.
        forecaster_options: extra ``.options()`` for every forecaster deployment.
    """
    handles = {}
    for name, config in settings.models.items():
        options: dict[str, Any] = {
            "name": f"Forecaster-{name}",
            "user_config": config.model_dump(mode="json"),
            "max_ongoing_requests": max(16, 2 * config.max_batch_size),
        }
        options.update(forecaster_options or {})
        handles[name] = ForecasterDeployment.options(**options).bind()
    ingress = Ingress.options(**ingress_options) if ingress_options else Ingress
    return ingress.bind(
        handles,
        default_model=settings.default,
        limits=settings.limits.model_dump(mode="json"),
        scheduler=settings.scheduler.model_dump(mode="json"),
        playground=settings.playground,
    )


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (``import_path: openanomaly.serve.app:build_app``).

    Raises ConfigError (naming the field) when ``args`` do not validate.
    """
    try:
        settings = AppSettings.model_validate(args)
    except ValidationError as error:
        raise ConfigError(str(error), source="serve_config.yaml applications[].args") from error
    models = {name: config.spec for name, config in settings.models.items()}
    for line in app_summary(models, pipelines=settings.scheduler.pipelines, playground=settings.playground):
        say(line)
    return build(settings)
