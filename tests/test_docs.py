"""What the README and docs/ state that a test can check: the files they cite exist, and
the README's example pipelines file passes ``openanomaly validate`` exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openanomaly.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_cited_test_files_exist(doc: Path) -> None:
    cited = set(re.findall(r"tests/[\w/]+\.py", doc.read_text()))
    missing = sorted(path for path in cited if not (ROOT / path).is_file())
    assert not missing, f"{doc.name} cites files that do not exist: {missing}"


def _readme_pipelines_file() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"A pipelines file:\n\n```yaml\n(.*?)```", text, re.DOTALL)
    assert block, "README: no yaml block after 'A pipelines file:'"
    return block.group(1)


def test_readme_pipelines_file_validates_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    """No environment beyond a clean one: optional settings (a token) stay commented out."""
    for name in re.findall(r"\$\{(\w+)", _readme_pipelines_file()):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "pipelines.yaml"
    path.write_text(_readme_pipelines_file())
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert "OK (1 pipelines: node-cpu)" in capsys.readouterr().out


def _python_samples() -> list[tuple[str, str]]:
    """``(document name, code)`` of every ```python block in the README and docs/."""
    return [
        (doc.name, block)
        for doc in DOCS
        for block in re.findall(r"^```python\n(.*?)^```", doc.read_text(), re.DOTALL | re.MULTILINE)
    ]


def test_code_samples_import_only_from_openanomaly() -> None:
    """The docs show the public surface (``openanomaly.__all__``), never a deeper module
    that may move."""
    import ast

    import openanomaly

    samples = _python_samples()
    assert samples, "no python code sample found"
    problems = []
    for name, code in samples:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                problems += [
                    f"{name}: import {a.name}" for a in node.names if a.name.startswith("openanomaly.")
                ]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("openanomaly"):
                if node.module != "openanomaly":
                    problems.append(f"{name}: from {node.module} import ...")
                problems += [
                    f"{name}: {a.name} is not in openanomaly.__all__"
                    for a in node.names
                    if node.module == "openanomaly" and a.name not in openanomaly.__all__
                ]
    assert not problems, "code samples must import from `openanomaly` only:\n" + "\n".join(problems)


def test_readme_python_sample_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "From Python" sample, run from the repository root: it scores the
    bundled example and the alert policy pages in it."""
    [code] = [code for name, code in _python_samples() if name == "README.md" and "score_range" in code]
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["detection"].anomaly_score.shape[0] == 1
    assert scope["alerts"].any()
