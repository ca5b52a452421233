"""The OpenAPI document: the deployment's limits and model names as schema bounds."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from openanomaly.serve.guard import OPEN_PATHS
from openanomaly.serve.schemas import (
    DetectRequest,
    ForecastRequest,
    Limits,
)

__all__ = ["body_schema", "openapi_document"]


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint that parses its own body (see ``app._parse``)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _bound(prop: dict[str, Any], **bounds: Any) -> None:
    """Set JSON-schema bounds on a property, on its non-null branch if it is optional."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            branch.update(bounds)


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the deployment's ``Limits`` as ``maxItems``/``maximum``
    and its model names as the ``model`` enum, so a client (or schemathesis) knows every
    bound the server enforces.

    Takes the app rather than reading the module's: ``serve.ingress`` serves a
    cloudpickled copy of ``fastapi_app``, the one ``Ingress.__init__`` configures.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (ForecastRequest, DetectRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    limits: Limits = getattr(app.state, "limits", None) or Limits()
    for name in ("SeriesIn", "DetectSeriesIn"):
        _bound(schemas[name]["properties"]["values"], maxItems=limits.max_points)
        _bound(schemas[name]["properties"]["timestamps_ms"], maxItems=limits.max_points)
    # ScoringConfig (the pipelines' model) checks 0 < low < 0.5 < high < 1 in code.
    band = schemas["ScoringConfig"]["properties"]["quantiles"]["prefixItems"]
    band[0].update(exclusiveMinimum=0, exclusiveMaximum=0.5)
    band[1].update(exclusiveMinimum=0.5, exclusiveMaximum=1)
    models: list[str] | None = getattr(app.state, "models", None)
    for name in ("ForecastRequest", "DetectRequest"):
        _bound(schemas[name]["properties"]["series"], maxItems=limits.max_series)
        if models:
            _bound(schemas[name]["properties"]["model"], enum=models)
    _bound(schemas["ForecastRequest"]["properties"]["horizon"], maximum=limits.max_horizon)
    detect_props = schemas["DetectRequest"]["properties"]
    _bound(detect_props["score_last"], maximum=limits.max_scored_points)
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in doc["paths"].items():
        if path not in OPEN_PATHS:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
    app.openapi_schema = doc
    return doc
