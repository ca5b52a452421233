"""Ray Serve deployments behind the HTTP API (``serve run serve_config.yaml``).

Importing this package does not import Ray; the deployments live in
``openanomaly.serve.app`` (FastAPI ingress, ``build_app`` builder) and
``openanomaly.serve.forecaster`` (the batched model deployment). Request and
response bodies are in ``openanomaly.serve.schemas``, the ingress's ``args`` in
``openanomaly.serve.settings``, its OpenAPI document in ``openanomaly.serve.openapi``.
"""

__all__: list[str] = []
