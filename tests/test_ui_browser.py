"""The playground in a real browser: Debian's chromium driven by Playwright (no browser download).

It runs the page as a user would on the bundled example CSV: upload, the step is
inferred (5m), Run with the form defaults (`default`, 2 days of context), then finds the
anomaly markers in the rendered chart (SVG marks with their aria-labels), checks they
agree with the summary, takes a screenshot, and checks that a failed run clears the
previous chart. In the Pipelines tab it signs in and creates a pipeline (on the Serve
app), and backtests one and checks the chart lies inside its block (standalone page).

Screenshots go to the test's temporary folder. ``OPENANOMALY_UPDATE_SCREENSHOTS=1 uv run
pytest tests/test_ui_browser.py`` writes them over the tracked ``docs/playground.png`` and
``docs/pipelines.png`` instead (the README's and docs/playground.md's pictures), so a test
run never changes the checkout unless asked to.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from openanomaly.cli import EXAMPLES_DIR
from openanomaly.ui import build_playground
from tests.fixtures.servers import free_port
from tests.fixtures.tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
UPDATE_SCREENSHOTS = "OPENANOMALY_UPDATE_SCREENSHOTS"
EXAMPLE_CSV = EXAMPLES_DIR / "data" / "ec2_request_latency_system_failure.csv"
TIMEOUT_MS = 180_000  # a run on 2 shared cores


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    blocks = build_playground()
    blocks.queue(default_concurrency_limit=1)
    _, url, _ = blocks.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True
    )
    try:
        yield url
    finally:
        blocks.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    chromium = require_tool("chromium")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _screenshot(name: str, tmp_path: Path) -> Path:
    """Where to save screenshot ``name``: ``docs/<name>`` when ``$OPENANOMALY_UPDATE_SCREENSHOTS``
    is ``1``, else ``tmp_path`` (see the module docstring)."""
    return (ROOT / "docs" if os.environ.get(UPDATE_SCREENSHOTS) == "1" else tmp_path) / name


def test_playground_finds_the_example_anomalies_in_a_real_browser(
    browser, page_url: str, tmp_path: Path
) -> None:
    """Saves ``playground.png`` (to docs/ only with ``OPENANOMALY_UPDATE_SCREENSHOTS=1``)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(page_url)
    page.get_by_label("CSV upload").check()
    page.locator("input[type=file][accept='.csv']").set_input_files(str(EXAMPLE_CSV))
    step = page.get_by_label("Step")
    page.wait_for_function("el => el.value === '5m'", arg=step.element_handle(), timeout=30_000)
    assert page.get_by_label("Forecast every").input_value() == "5m"
    assert page.get_by_label("Context").input_value() == "5d"

    page.get_by_role("button", name="Run").click()
    summary = page.get_by_text(re.compile(r"series scored, \d+ points")).first
    summary.wait_for(timeout=TIMEOUT_MS)
    anomalous = int(re.search(r"(\d+) anomalous", summary.inner_text()).group(1))
    markers = page.locator("svg.marks g.mark-symbol.role-mark path[aria-label*='kind: anomaly (score > 1)']")
    markers.first.wait_for(timeout=30_000)
    labels = markers.evaluate_all("paths => paths.map(p => p.getAttribute('aria-label'))")
    assert anomalous >= 3 and len(labels) == anomalous  # one red marker per point scoring above 1
    # The largest labelled incident (2014-03-18 22:41, latency 99.248) is among them.
    assert any("Mar 18 22:41; value: 99.248;" in label for label in labels), labels
    page.screenshot(path=str(_screenshot("playground.png", tmp_path)), full_page=True)

    # A failed run leaves no stale chart: the error shows and the previous result is gone.
    page.get_by_label("Context").fill("bogus")
    page.get_by_role("button", name="Run").click()
    page.get_by_text(re.compile(r"Context: ")).first.wait_for(timeout=30_000)
    assert page.locator("svg.marks").count() == 0
    assert page.get_by_text(re.compile(r"series scored")).count() == 0
    page.close()


ADMIN = "browser-admin-token"
NEW_PIPELINE = """name: browser-cpu
query: vector(1)
step: 1m
model: mad
schedule:
  infer_every: 5m
  context: 1h
"""


@pytest.fixture(scope="module")
def served_playground(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Serve app a user runs (API + playground + scheduler on a pipelines file), auth on."""
    import contextlib
    import uuid

    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    from openanomaly.serve.app import build
    from openanomaly.serve.settings import AppSettings

    path = tmp_path_factory.mktemp("browser-pipelines") / "pipelines.yaml"
    path.write_text("settings:\n  tsdb:\n    url: http://127.0.0.1:9\npipelines: []\n")
    link = {"pipelines": str(path), "name": f"oa-browser-{uuid.uuid4().hex[:6]}", "namespace": "oa-browser"}
    settings = AppSettings.model_validate({"models": {"z": {"spec": "zscore"}}, "scheduler": link})
    env = {"OPENANOMALY_API_TOKEN": ADMIN}
    ingress = {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": env}}}
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = _get_global_client().http_config.port
    name, prefix = "oa-browser", "/oa-browser"
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    serve.run(
        build(settings, ingress_options=ingress, forecaster_options=small), name=name, route_prefix=prefix
    )
    try:
        yield f"http://127.0.0.1:{port}{prefix}"
    finally:
        serve.delete(name)
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(link["name"], namespace=link["namespace"]))


def test_login_then_create_a_pipeline_in_the_pipelines_tab(
    browser, served_playground: str, tmp_path: Path
) -> None:
    """Saves ``pipelines.png`` (to docs/ only with ``OPENANOMALY_UPDATE_SCREENSHOTS=1``)."""
    import httpx

    # Tall enough for the whole tab: a full-page shot of a taller page resizes the viewport,
    # and the table and picker re-render blank in the picture.
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{served_playground}/playground/")
    # Auth is on: the browser is sent to the login page, then back to the playground.
    page.wait_for_url(re.compile(r"/login"), timeout=30_000)
    page.get_by_label("Token").fill(ADMIN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/playground/"), timeout=60_000)
    page.get_by_role("tab", name="Pipelines").click()

    editor = page.locator(".cm-content").first
    editor.wait_for(timeout=60_000)
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(NEW_PIPELINE)
    page.get_by_role("button", name="Save").click()
    created = page.get_by_text(re.compile(r"created; the scheduler picks it up"))
    toast = page.locator(".toast-body")
    created.or_(toast).first.wait_for(timeout=60_000)
    assert toast.count() == 0, toast.first.inner_text()
    page.get_by_role("button", name="Refresh").click()
    # Listed: its row shows in the table, "pending" until the scheduler's next tick.
    row = page.get_by_text(re.compile(r"^(pending|idle|running|no_data)$")).filter(visible=True)
    row.first.wait_for(timeout=60_000)
    page.screenshot(path=str(_screenshot("pipelines.png", tmp_path)), full_page=True)

    # Run now reaches the scheduler: it runs the windows, or says it has not seen it yet.
    page.get_by_role("button", name="Run now").click()
    answer = re.compile(r"browser-cpu.*(started|up_to_date|already_running|waiting|not picked)")
    page.get_by_text(answer).first.wait_for(timeout=60_000)
    assert page.locator(".toast-body").filter(has_text=re.compile("Error")).count() == 0

    # Signing out clears the session: the playground asks for the token again.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/login"), timeout=30_000)
    page.goto(f"{served_playground}/playground/")
    page.wait_for_url(re.compile(r"/login"), timeout=30_000)
    page.close()

    # It is stored where the API reads it: the same pipeline over HTTP with the bearer token.
    reply = httpx.get(
        f"{served_playground}/v1/pipelines/browser-cpu",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["definition"]["query"] == "vector(1)"


WAVE_PIPELINE = """name: browser-wave
query: sin(time() / 600) + 2
step: 1m
model: mad
schedule:
  infer_every: 5m
  context: 1h
"""


@pytest.fixture(scope="module")
def playground_with_file(victoria_metrics, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The standalone playground on a pipelines file (so with a Pipelines tab) and a real TSDB."""
    path = tmp_path_factory.mktemp("browser-file") / "pipelines.yaml"
    path.write_text(f"settings:\n  tsdb:\n    url: {victoria_metrics.url}\npipelines: []\n")
    blocks = build_playground(config=path)
    blocks.queue(default_concurrency_limit=1)
    _, url, _ = blocks.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True
    )
    try:
        yield url
    finally:
        blocks.close()


def test_pipelines_tab_backtest_chart_fits_its_column(browser, playground_with_file: str) -> None:
    """The Pipelines tab's chart sits in a narrower column than the Explore tab's: drawn at
    the Explore width it overflowed both edges and the left one was cut off (legend read
    "ual", no y-axis labels). Every part of it, legend and y-axis included, must lie inside
    its block."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(playground_with_file)
    page.get_by_role("tab", name="Pipelines").click()
    editor = page.locator(".cm-content").first
    editor.wait_for(timeout=60_000)
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(WAVE_PIPELINE)
    page.get_by_role("button", name="Backtest this range").click()
    chart = page.locator("#pipelines-backtest-plot svg.marks").first
    chart.wait_for(timeout=TIMEOUT_MS)
    block = page.locator("#pipelines-backtest-plot").bounding_box()
    drawn = chart.bounding_box()
    assert block is not None and drawn is not None
    assert drawn["x"] >= block["x"] - 1, (drawn, block)
    assert drawn["x"] + drawn["width"] <= block["x"] + block["width"] + 1, (drawn, block)
    legend = page.locator("#pipelines-backtest-plot svg.marks text", has_text=re.compile("^actual$")).first
    shown = legend.bounding_box()
    assert shown is not None and shown["x"] >= block["x"], (shown, block)
    page.close()
