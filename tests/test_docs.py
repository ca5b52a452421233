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
