"""``/v1/pipelines``: list, read, validate, create/replace, delete, version history and
manual runs of pipelines, over :class:`~openanomaly.configstore.admin.PipelineAdmin`.

Concurrency follows HTTP: every read returns the definition's ``ETag``; a ``PUT`` or
``DELETE`` with ``If-Match`` fails with 412 when someone changed the pipeline since,
and ``If-None-Match: *`` makes a ``PUT`` create-only. Writes need the admin token
(:func:`~openanomaly.serve.guard.require_write`); the read token sees everything.

The ingress sets ``app.state.pipelines`` (a function returning the admin, or ``None``
when the app manages no pipelines file) and ``app.state.scheduler`` (a function returning
the scheduler actor); both raise :class:`SchedulerUnavailable` saying what is missing.
Store calls block (a file lock, S3), and parsing and validating a body walks it, so
both run in a thread, off the event loop; a body is parsed within
:data:`~openanomaly.configstore.yamlsafe.DEFINITION_LIMITS` first, so that walk is small.

No ``from __future__ import annotations``: FastAPI reads the annotations at run time.
"""

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from openanomaly.configstore.admin import PipelineAdmin, definition_name, parse_definition, to_yaml
from openanomaly.configstore.pipelines import StoredPipeline
from openanomaly.core.config import PIPELINE_NAME, PIPELINE_NAME_MAX
from openanomaly.errors import SchedulerUnavailable
from openanomaly.serve.guard import require_write
from openanomaly.serve.schemas import RequestError, clip

__all__ = ["router"]

router = APIRouter(tags=["pipelines"])

Name = Annotated[
    str, Path(max_length=PIPELINE_NAME_MAX, pattern=PIPELINE_NAME, description="the pipeline's name")
]

_JSON_OR_YAML = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object", "description": "a pipeline definition"}},
        "application/yaml": {"schema": {"type": "string", "description": "a pipeline definition"}},
    },
}


def _admin(request: Request) -> PipelineAdmin:
    admin: Callable[[], PipelineAdmin] | None = getattr(request.app.state, "pipelines", None)
    if admin is None:
        raise SchedulerUnavailable(
            "this app manages no pipelines file: set args.scheduler.pipelines in serve_config.yaml"
        )
    return admin()


def _etag(header: str | None) -> str | None:
    """An ``If-Match`` value as the store's etag: quotes and a weak ``W/`` prefix dropped."""
    if header is None or header.strip() == "*":
        return None
    return header.strip().removeprefix("W/").strip('"')


def _view(stored: StoredPipeline, status: dict[str, Any] | None) -> JSONResponse:
    body = {
        "name": stored.name,
        "etag": stored.etag,
        "definition": stored.definition,
        "yaml": to_yaml(stored.definition),
        "status": status,
    }
    return JSONResponse(body, headers={"ETag": f'"{stored.etag}"'})


async def _body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "application/json")
    kind = content_type.split(";")[0].strip().lower()
    if kind not in ("application/json", "application/yaml", "application/x-yaml", "text/yaml", "text/plain"):
        raise RequestError(
            f"send the pipeline as application/json or application/yaml, not {clip(kind)}",
            field="content-type",
            status=415,
        )
    body = await request.body()
    # Off the event loop: within a pipeline's limits this is milliseconds, but never /healthz's.
    return await asyncio.to_thread(parse_definition, body, content_type=kind)


@router.get("/v1/pipelines")
async def list_pipelines(request: Request) -> dict[str, Any]:
    """Every pipeline with its etag and schedule state: last run, lag, series scored, last error."""
    if getattr(request.app.state, "pipelines", None) is None:
        # A scheduler started apart (`openanomaly scheduler -c FILE`): its status only.
        return await request.app.state.scheduler().status.remote()
    return await asyncio.to_thread(_admin(request).overview)


@router.post("/v1/pipelines:validate", openapi_extra={"requestBody": _JSON_OR_YAML})
async def validate_pipeline(request: Request) -> dict[str, Any]:
    """Dry run: 200 with the pipeline as it would load (defaults filled in), or 422 naming the field."""
    admin = _admin(request)
    definition = await _body(request)
    pipeline = await asyncio.to_thread(admin.check, definition_name(definition), definition)
    return {"valid": True, "pipeline": pipeline.model_dump(mode="json")}


@router.get("/v1/pipelines/{name}")
async def get_pipeline(request: Request, name: Name) -> JSONResponse:
    """The definition as stored (``${VAR}`` unexpanded), its ``ETag`` and its schedule state."""
    admin = _admin(request)
    stored = await asyncio.to_thread(admin.get, name)
    status = await asyncio.to_thread(admin.scheduler_status)
    return _view(stored, status["pipelines"].get(name))


@router.put("/v1/pipelines/{name}", openapi_extra={"requestBody": _JSON_OR_YAML})
async def put_pipeline(request: Request, response: Response, name: Name) -> JSONResponse:
    """Create (201) or replace (200) the pipeline after validating it like ``openanomaly validate``.

    ``If-Match: "<etag>"`` replaces only that version (412 otherwise); ``If-None-Match: *``
    only creates. Invalid: 422 naming the field, and nothing is stored.
    """
    who = require_write(request).name
    admin = _admin(request)
    definition = await _body(request)
    stored, created = await asyncio.to_thread(
        admin.put,
        name,
        definition,
        who=who,
        if_match=_etag(request.headers.get("if-match")),
        if_none_match=request.headers.get("if-none-match", "").strip() == "*",
    )
    view = _view(stored, None)
    view.status_code = 201 if created else 200
    return view


@router.delete("/v1/pipelines/{name}")
async def delete_pipeline(request: Request, name: Name) -> dict[str, Any]:
    """Delete the pipeline (``If-Match`` guards it as for a ``PUT``); the scheduler stops it next tick."""
    who = require_write(request).name
    deleted = await asyncio.to_thread(
        _admin(request).delete, name, who=who, if_match=_etag(request.headers.get("if-match"))
    )
    return {"deleted": deleted.name, "etag": deleted.etag}


@router.get("/v1/pipelines/{name}/versions")
async def pipeline_versions(request: Request, name: Name) -> dict[str, Any]:
    """Its versions, newest first: who changed it, when, and the definition of each.

    The S3 store keeps every version; the YAML store the current one and the ``.bak``.
    """
    versions = await asyncio.to_thread(_admin(request).versions, name)
    return {"name": name, "versions": [v.__dict__ for v in versions]}


@router.post("/v1/pipelines/{name}/run")
async def run_pipeline(request: Request, name: Name) -> dict[str, Any]:
    """Run its due windows now: ``started``, ``already_running``, ``up_to_date`` or ``waiting``."""
    require_write(request)
    try:
        return await request.app.state.scheduler().trigger.remote(name)
    except KeyError:
        raise RequestError(f"no pipeline named {clip(name)}", field="name", status=404) from None
