# OpenAnomaly image: Ray head/worker with the openanomaly package, built with uv.
#
#   docker build -t openanomaly .                                   # CPU torch (~2 GB smaller)
#   docker build -t openanomaly:cuda \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .  # CUDA 12.8 torch
#   docker run --rm openanomaly openanomaly --help
#
# TORCH_INDEX is the wheel index torch comes from, at the version uv.lock pins: the
# PyTorch CPU index by default (no CUDA libraries), a CUDA index (whl/cu126, whl/cu128 …)
# for GPU nodes, or https://pypi.org/simple for PyPI's default CUDA build. Everything
# else is installed from uv.lock as locked. The same image serves as Ray head (Serve +
# scheduler, see docker-compose.yml) and as a Ray worker (KubeRay).
FROM python:3.11-slim-bookworm AS build

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/app/.venv
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /app
# Dependencies first (a cached layer): torch from TORCH_INDEX at the locked version,
# then the rest of the lock without torch and what only torch needs (--prune torch).
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv "$VIRTUAL_ENV" \
    && torch_pin="$(uv export --frozen --no-dev --no-emit-project --no-hashes \
        | grep -E '^torch==' | cut -d';' -f1 | tr -d ' ')" \
    && uv pip install --index-url "$TORCH_INDEX" "$torch_pin" \
    && uv export --frozen --no-dev --no-emit-project --no-hashes --prune torch -o /tmp/requirements.txt \
    && uv pip install -r /tmp/requirements.txt
# Then the project itself.
COPY README.md serve_config.yaml ./
COPY openanomaly ./openanomaly
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --no-deps .

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 1000 openanomaly
WORKDIR /app
COPY --from=build --chown=openanomaly:openanomaly /app /app
ENV PATH="/app/.venv/bin:$PATH" \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1
USER 1000:1000
EXPOSE 8000 8265 6379
# The Serve HTTP API's liveness endpoint (a head running Serve; Kubernetes uses its own probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["openanomaly", "--help"]
