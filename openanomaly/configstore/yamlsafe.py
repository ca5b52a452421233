"""The one YAML parser: safe, duplicate keys refused, and bounded before anything walks the tree.

PyYAML shares an anchored node between its aliases, so composing and constructing a
document is cheap however often a node is reused; the cost comes later, when code walks
the tree as if every alias were a copy (``${VAR}`` checks, pydantic, ``safe_dump``). A
290-byte body with nine aliases per level, seven levels deep, expands to 9**7 (about
4.8 million) nodes: walking it holds the event loop for seconds, and each level more
multiplies that by nine. So :func:`load_yaml` composes the node graph, counts the
nodes it stands for *after* alias expansion (memoised per node, so counting costs only
the nodes actually written) and refuses a document over :class:`YamlLimits` before a
single Python object is built. Depth is bounded while composing: PyYAML's composer
recurses once per level, and deep enough nesting runs out of stack (``RecursionError``).

Only JSON's kinds of values are accepted (strings, numbers, booleans, null, lists,
mappings; plus ``<<`` merges): ``!!binary`` made bytes, which no JSON reply can hold
(a 500), and ``!!set``/``!!timestamp`` would fail later and further from the input.

Two budgets: :data:`DEFINITION_LIMITS` for one pipeline (a request body, the playground
editor, one S3 object) and :data:`FILE_LIMITS` for a whole pipelines file written by
the operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from openanomaly.errors import ConfigError

__all__ = ["DEFINITION_LIMITS", "FILE_LIMITS", "YamlLimits", "load_json", "load_yaml"]


@dataclass(frozen=True)
class YamlLimits:
    """What one YAML document may cost, checked before it is turned into Python objects.

    Attributes:
        what: how messages name the document ("a pipeline definition").
        max_bytes: its UTF-8 size.
        max_depth: nesting of lists and mappings.
        max_nodes: scalars, lists and mappings once every alias is expanded.
        max_aliases: ``*alias`` references written in it.
        hint: said after a size refusal, so the sender knows why the limit is what it is.
    """

    what: str
    max_bytes: int
    max_depth: int
    max_nodes: int
    max_aliases: int
    hint: str = ""


DEFINITION_LIMITS = YamlLimits(
    what="a pipeline definition",
    max_bytes=64 * 1024,
    max_depth=32,
    max_nodes=10_000,
    max_aliases=100,
    hint="a pipeline is small: a query, a model and a schedule",
)
"""One pipeline: the API's bodies, the playground's editor, one object of the S3 store."""

FILE_LIMITS = YamlLimits(
    what="a configuration file",
    max_bytes=8 * 1024 * 1024,
    max_depth=64,
    max_nodes=2_000_000,
    max_aliases=100_000,
)
"""A pipelines file: settings and every pipeline (thousands fit)."""

_TAG = "tag:yaml.org,2002:"
_KINDS = ("str", "int", "float", "bool", "null", "seq", "map", "merge")
_ALLOWED_TAGS = frozenset(_TAG + kind for kind in _KINDS)


def _refusal(limits: YamlLimits, what_not: str, mark: Any, source: str | None) -> ConfigError:
    """``<what> may not <what_not> (line L, column C)``: the error for a broken limit."""
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return ConfigError(f"{limits.what} may not {what_not}{where}", source=source)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and counts depth and aliases while composing."""

    def __init__(self, stream: str, limits: YamlLimits, source: str | None) -> None:
        super().__init__(stream)
        self.limits = limits
        self.source = source
        self.depth = 0
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > self.limits.max_aliases:
                what_not = f"hold more than {self.limits.max_aliases} aliases"
                raise _refusal(self.limits, what_not, event.start_mark, self.source)
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > self.limits.max_depth:
                what_not = f"be nested deeper than {self.limits.max_depth} levels"
                raise _refusal(self.limits, what_not, event.start_mark, self.source)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    """PyYAML silently keeps the last of two equal keys; a key written twice is an error.

    Keys merged in with ``<<`` may be overridden: that is what a merge is for.
    """
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _TAG + "merge":
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1}, column {mark.column + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_graph(root: yaml.Node, limits: YamlLimits, source: str | None) -> None:
    """Refuse odd tags, and a graph that stands for more than ``max_nodes`` nodes.

    Each distinct node is visited once (children before parents, without recursion);
    its expanded size is 1 plus its children's, so a node referenced by nine aliases
    counts nine times without being walked nine times.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if not children_done:
            if node.tag not in _ALLOWED_TAGS:
                tag = node.tag.replace(_TAG, "!!")
                what_not = f"use the tag {tag} (only strings, numbers, booleans, null, lists and mappings)"
                raise _refusal(limits, what_not, node.start_mark, source)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
            continue
        size = 1 + sum(sizes[id(child)] for child in _children(node))
        if size > limits.max_nodes:
            what_not = f"hold more than {limits.max_nodes} values once its aliases are expanded"
            raise _refusal(limits, what_not, node.start_mark, source)
        sizes[id(node)] = size


def _text_within(text: str | bytes, limits: YamlLimits, source: str | None) -> str:
    """``text`` as a string, once its size is known to be within ``limits``."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", errors="replace"))
    if size > limits.max_bytes:
        hint = f" ({limits.hint})" if limits.hint else ""
        raise ConfigError(
            f"{limits.what} may be at most {limits.max_bytes} bytes, this one is {size}{hint}", source=source
        )
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text


def load_json(text: str | bytes, *, limits: YamlLimits = DEFINITION_LIMITS, source: str | None = None) -> Any:
    """``text`` as JSON within the same ``limits`` (JSON has no aliases: size and depth).

    Raises:
        ConfigError: ``malformed JSON: <problem>``, or the limit it breaks.
    """
    text = _text_within(text, limits, source)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"malformed JSON: {error}", source=source) from None
    except RecursionError:
        value = None  # nested far deeper than any limit
        depth = limits.max_depth + 1
    else:
        depth = _depth(value, limits.max_depth)
    if depth > limits.max_depth:
        raise _refusal(limits, f"be nested deeper than {limits.max_depth} levels", None, source)
    return value


def _depth(value: Any, cap: int) -> int:
    """Nesting of lists and objects in ``value``, counted without recursion up to ``cap + 1``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > cap:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def load_yaml(text: str | bytes, *, limits: YamlLimits = FILE_LIMITS, source: str | None = None) -> Any:
    """``text`` as YAML, safely, duplicate keys refused, within ``limits``.

    Raises:
        ConfigError: ``malformed YAML: line L, column C: <problem>``, or which limit of
            ``limits`` the document breaks (nothing of it was built).
    """
    text = _text_within(text, limits, source)
    loader = _Loader(text, limits, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, limits, source)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError(f"malformed YAML: {where}{detail}", source=source) from None
    finally:
        loader.dispose()
