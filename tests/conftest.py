"""Shared fixtures: each area's fixtures live in tests/fixtures/<area>.py."""

import os

# Set before Ray is imported anywhere: no telemetry, and no token auth on the
# throw-away local cluster (on by default since Ray 2.59).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Under `uv run`, Ray would give every worker its own `uv run` environment (slow first
# start); the test cluster is local, so workers use this interpreter as they are.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.tiny_models",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.s3",
]
