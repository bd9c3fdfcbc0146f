"""Parse YAML into plain Python values plus the position of every key and value.

Pure: takes text, returns data. Duplicate keys are reported (PyYAML silently keeps the last one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .problems import Problem, format_path

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    """1-based line and column."""

    line: int
    column: int


@dataclass
class SourceMap:
    """Where each path of a parsed document stands in its file."""

    file: str
    values: dict[Loc, Position] = field(default_factory=dict)
    keys: dict[Loc, Position] = field(default_factory=dict)

    def locate(self, loc: Loc, *, key: bool = False) -> Position:
        """The position of `loc`, or of its nearest enclosing path that has one."""
        if key and loc in self.keys:
            return self.keys[loc]
        for end in range(len(loc), -1, -1):
            found = self.values.get(loc[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def problem(self, loc: Loc, message: str, *, key: bool = False) -> Problem:
        pos = self.locate(loc, key=key)
        return Problem(self.file, pos.line, pos.column, format_path(loc), message)


class _Constructor(yaml.SafeLoader):
    """SafeLoader used only to construct scalars and flatten `<<` merge keys."""


def _pos(node: Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap, list[Problem]]:
    """Parse one YAML document. Returns (data, source map, problems).

    Syntax errors come back as problems with data None; duplicate keys as problems beside the data
    (the first occurrence wins, and the duplicate is named with both lines).
    """
    source = SourceMap(file)
    problems: list[Problem] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        problems.append(Problem(file, line, column, "", f"YAML syntax error: {what}"))
        return None, source, problems
    except yaml.YAMLError as exc:
        problems.append(Problem(file, 1, 1, "", f"YAML error: {exc}"))
        return None, source, problems
    if node is None:
        return None, source, problems
    constructor = _Constructor("")
    data = _build(node, (), source, problems, constructor)
    return data, source, problems


def _build(
    node: Node, loc: Loc, source: SourceMap, problems: list[Problem], ctor: _Constructor
) -> Any:
    source.values.setdefault(loc, _pos(node))
    if isinstance(node, ScalarNode):
        try:
            return ctor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problems.append(source.problem(loc, f"cannot read this value: {exc}"))
            return None
    if isinstance(node, SequenceNode):
        return [
            _build(item, (*loc, i), source, problems, ctor) for i, item in enumerate(node.value)
        ]
    if isinstance(node, MappingNode):
        return _build_mapping(node, loc, source, problems, ctor)
    problems.append(source.problem(loc, f"unsupported YAML node {node.tag}"))
    return None


def _build_mapping(
    node: MappingNode, loc: Loc, source: SourceMap, problems: list[Problem], ctor: _Constructor
) -> dict[Any, Any]:
    try:
        ctor.flatten_mapping(node)
    except yaml.YAMLError as exc:
        problems.append(source.problem(loc, f"bad merge key: {exc}"))
    out: dict[Any, Any] = {}
    first_seen: dict[Any, Position] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            problems.append(
                source.problem(loc, "mapping keys must be plain scalars, not lists or mappings")
            )
            continue
        try:
            raw_key = ctor.construct_object(key_node)
        except yaml.YAMLError as exc:
            problems.append(source.problem(loc, f"cannot read this key: {exc}"))
            continue
        # Keys are names; YAML 1.1 turns `on:` into True and `8:` into 8, so name them as written.
        key = raw_key if isinstance(raw_key, str) else str(key_node.value)
        if key in first_seen:
            pos = _pos(key_node)
            first = first_seen[key]
            problems.append(
                Problem(
                    source.file,
                    pos.line,
                    pos.column,
                    format_path((*loc, key)),
                    f"duplicate key {key!r} (first set at line {first.line}); remove one of them",
                )
            )
            continue
        first_seen[key] = _pos(key_node)
        source.keys[(*loc, key)] = _pos(key_node)
        out[key] = _build(value_node, (*loc, key), source, problems, ctor)
    return out
