"""The package's layout: layers whose imports only go down, no import cycle, no file over 600 lines.

Imports are read from the source (``ast``), at module level and inside functions alike
(a deferred import is still a dependency), ``TYPE_CHECKING`` blocks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "openanomaly"
MAX_LINES = 600

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("models", "pretrain"),
    ("core",),
    ("io",),
    ("configstore",),
    ("runtime",),
    ("cli", "demo", "evaluation", "serve", "ui"),
)
"""Bottom first: a module may import its own layer and the ones below it, never one above.
The package root (``openanomaly/__init__.py``, the public names) sits above every layer."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that ``name`` imports (the longest known prefix of each name)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join([*base, *([node.module] if node.module else [])])
            targets = [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def _layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:  # the package root
        return len(LAYERS)
    for index, layer in enumerate(LAYERS):
        if parts[1] in layer:
            return index
    raise AssertionError(f"{name} is in no layer: add its package to LAYERS")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_imports_only_go_down(graph: dict[str, set[str]]) -> None:
    upward = [
        f"{name} ({LAYERS[_layer(name)][0]} layer) imports {target}"
        for name, targets in sorted(graph.items())
        if _layer(name) < len(LAYERS)
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_readme_layout_names_every_package() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("### Layout") :]
    packages = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))
    missing = [name for name in packages if f"`{name}/`" not in table]
    assert not missing, f"README's Layout table misses {missing}"
    layered = {name for layer in LAYERS for name in layer}
    assert set(packages) <= layered, set(packages) - layered


def test_no_file_over_600_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
