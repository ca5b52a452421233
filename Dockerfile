# OpenAnomaly image: Ray head/worker with the openanomaly package, built with uv.
#
#   docker build -t openanomaly .
#   docker run --rm openanomaly python -c "import openanomaly"
#
# The same image serves as Ray head (serve + scheduler, see docker-compose.yml) and as
# a Ray worker (KubeRay). CPU torch by default; for GPUs build FROM a CUDA base image.
FROM python:3.11-slim-bookworm AS build

COPY --from=ghcr.io/astral-sh/uv:0.5.11 /uv /uvx /bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never

WORKDIR /app
# Dependencies first (cached layer), from the lock file, without the project itself.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
# Then the project.
COPY README.md serve_config.yaml ./
COPY openanomaly ./openanomaly
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 1000 openanomaly
WORKDIR /app
COPY --from=build --chown=openanomaly:openanomaly /app /app
ENV PATH="/app/.venv/bin:$PATH" \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1
USER openanomaly
EXPOSE 8000 8265 6379
CMD ["openanomaly", "scheduler", "--help"]
