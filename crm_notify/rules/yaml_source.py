"""Read a YAML rule file into plain Python data, remembering the line of every node.

ruamel.yaml only *composes* the file into a node graph (YAML 1.2 semantics, so ``on`` and ``NO``
stay strings); this module builds ``dict``/``list``/scalars from the nodes itself. Doing so lets it
record a line for every path in the document, reject what a rule file never needs (custom tags,
merge keys, duplicate keys) and bound the work: aliases are expanded by the walk, and every
node visited counts towards ``max_nodes``, so a "billion laughs" file fails fast.
"""

from __future__ import annotations

import codecs
import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from ruamel.yaml import YAML
from ruamel.yaml.error import ReusedAnchorWarning, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent, NodeEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from crm_notify.errors import RuleFileError

#: Largest rule file accepted, in bytes.
MAX_FILE_BYTES = 1024 * 1024
#: Most nodes (keys, values, list items, each alias expansion counted again) one file may build.
MAX_NODES = 10_000
#: Deepest nesting of mappings and lists accepted; rule files need about five levels.
MAX_DEPTH = 32

#: A position in the document: mapping keys and list indexes from the root, ``()`` is the root.
NodePath = tuple[str | int, ...]

_TAG_PREFIX = "tag:yaml.org,2002:"
_MAP, _SEQ = _TAG_PREFIX + "map", _TAG_PREFIX + "seq"
_STR, _NULL, _BOOL = _TAG_PREFIX + "str", _TAG_PREFIX + "null", _TAG_PREFIX + "bool"
_INT, _FLOAT = _TAG_PREFIX + "int", _TAG_PREFIX + "float"
_TIMESTAMP, _MERGE = _TAG_PREFIX + "timestamp", _TAG_PREFIX + "merge"
_SCALAR_TAGS = frozenset({_STR, _NULL, _BOOL, _INT, _FLOAT, _TIMESTAMP})


class YamlDocument(NamedTuple):
    """A loaded document: plain data plus the 1-based line of each path in it.

    For a mapping entry the line is that of its key; for a list item, that of the item.
    """

    data: Any
    lines: dict[NodePath, int]

    def line_for(self, path: NodePath) -> int | None:
        """Return the line of ``path``, or of its nearest ancestor present in the document.

        Parameters:
            path: keys and indexes from the root, e.g. ``("rules", 0, "template")``.

        Returns:
            The 1-based line, or ``None`` for an empty line map.
        """
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def read_yaml_file(
    path: Path, *, max_bytes: int = MAX_FILE_BYTES, max_nodes: int = MAX_NODES
) -> YamlDocument:
    """Read and build one YAML file.

    Parameters:
        path: the file.
        max_bytes: larger files are rejected before parsing.
        max_nodes: see :data:`MAX_NODES`.

    Raises:
        RuleFileError: unreadable, too large, not UTF-8, empty, invalid YAML, or beyond a bound.

    Returns:
        The document with its line map.
    """
    try:
        with path.open("rb") as stream:
            raw = stream.read(max_bytes + 1)
    except OSError as exc:
        raise RuleFileError(path, None, f"cannot read file: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise RuleFileError(path, None, f"file is larger than {max_bytes} bytes")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RuleFileError(
            path,
            line,
            f"{path.name} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            "save the file as UTF-8",
        ) from exc
    return parse_yaml(text, path, max_nodes=max_nodes)


def parse_yaml(text: str, path: Path, *, max_nodes: int = MAX_NODES) -> YamlDocument:
    """Build the single YAML 1.2 document in ``text``.

    Parameters:
        text: the file's content.
        path: the file, for error messages.
        max_nodes: see :data:`MAX_NODES`.

    Raises:
        RuleFileError: empty, invalid YAML, not YAML 1.2, or beyond a bound.

    Returns:
        The document with its line map.
    """
    yaml = YAML(typ="rt", pure=True)
    try:
        _check_bounds(text, path, max_nodes)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ReusedAnchorWarning)
            root = yaml.compose(text)
    except ReusedAnchorWarning as exc:
        lines = re.findall(r"line (\d+)", str(exc))
        anchor = re.search(r"duplicate anchor '([^']*)'", str(exc))
        name = anchor.group(1) if anchor else "?"
        line = int(lines[-1]) if lines else None
        raise RuleFileError(path, line, f"anchor '&{name}' is defined twice") from exc
    except YAMLError as exc:
        raise _yaml_error(path, exc) from exc
    except RecursionError as exc:
        raise RuleFileError(path, None, "YAML is nested too deeply") from exc
    if yaml.version is not None and tuple(yaml.version) != (1, 2):
        line = next((n for n, s in enumerate(text.splitlines(), 1) if s.startswith("%YAML")), 1)
        found = ".".join(str(part) for part in yaml.version)
        raise RuleFileError(path, line, f"only YAML 1.2 is supported, found '%YAML {found}'")
    builder = _Builder(path, max_nodes)
    data = builder.build(root, (), 0) if root is not None else None
    if data is None:
        raise RuleFileError(path, None, "file is empty", "a rule file needs at least one rule")
    builder.lines[()] = _line(root)
    return YamlDocument(data, builder.lines)


def _check_bounds(text: str, path: Path, max_nodes: int) -> None:
    """Stream the parse events and stop early at a bound, before composing the whole file.

    ruamel.yaml's composer recurses per nesting level and its scanner slows down sharply with
    depth; the event stream is lazy, so a deep or huge file is rejected after a few events.
    Each node event is one node the builder would visit at least once, so the count is a
    lower bound of the builder's.
    """
    depth = nodes = 0
    for event in YAML(typ="rt", pure=True).parse(text):
        if isinstance(event, NodeEvent):
            nodes += 1
            if nodes > max_nodes:
                raise _too_many_nodes(path, event.start_mark.line + 1, max_nodes)
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(path, event.start_mark.line + 1)
        elif isinstance(event, CollectionEndEvent):
            depth -= 1


def _too_many_nodes(path: Path, line: int, max_nodes: int) -> RuleFileError:
    return RuleFileError(
        path,
        line,
        f"too many nodes: the file (with aliases expanded) exceeds {max_nodes}",
        "split the rules into several files, or use fewer aliases",
    )


def _too_deep(path: Path, line: int) -> RuleFileError:
    return RuleFileError(path, line, f"nested deeper than {MAX_DEPTH} levels")


def _yaml_error(path: Path, exc: YAMLError) -> RuleFileError:
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    message = f"invalid YAML: {context}: {problem}" if context else f"invalid YAML: {problem}"
    return RuleFileError(path, line, message)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _tag(node: Node) -> str:
    tag = node.tag
    return str(getattr(tag, "value", tag))


class _Builder:
    """Walks one node graph into plain data, counting nodes and recording lines."""

    def __init__(self, path: Path, max_nodes: int) -> None:
        self.path = path
        self.max_nodes = max_nodes
        self.count = 0
        self.lines: dict[NodePath, int] = {}

    def build(self, node: Node, path: NodePath, depth: int) -> Any:
        self.count += 1
        if self.count > self.max_nodes:
            raise _too_many_nodes(self.path, _line(node), self.max_nodes)
        if depth > MAX_DEPTH:
            raise _too_deep(self.path, _line(node))
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            self._check_tag(node, {_SEQ})
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = _line(item)
                items.append(self.build(item, (*path, index), depth + 1))
            return items
        return self._scalar(node)

    def _mapping(self, node: MappingNode, path: NodePath, depth: int) -> dict[str, Any]:
        self._check_tag(node, {_MAP})
        result: dict[str, Any] = {}
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            self.count += 1
            key = self._key(key_node)
            line = _line(key_node)
            if key in first_lines:
                raise RuleFileError(
                    self.path, line, f"duplicate key '{key}' (first on line {first_lines[key]})"
                )
            first_lines[key] = line
            self.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result

    def _key(self, node: Node) -> str:
        if not isinstance(node, ScalarNode):
            raise RuleFileError(self.path, _line(node), "mapping keys must be plain strings")
        if _tag(node) == _MERGE:
            raise RuleFileError(
                self.path,
                _line(node),
                "merge keys ('<<') are not supported",
                "repeat the keys, or use an alias for a whole value",
            )
        self._check_tag(node, _SCALAR_TAGS)
        return str(node.value)

    def _scalar(self, node: Node) -> Any:
        tag = _tag(node)
        self._check_tag(node, _SCALAR_TAGS)
        value = str(node.value)
        if tag in (_STR, _TIMESTAMP):
            return value
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return value.lower() == "true"
        try:
            return _int(value) if tag == _INT else _float(value)
        except ValueError as exc:
            kind = "integer" if tag == _INT else "number"
            raise RuleFileError(self.path, _line(node), f"invalid {kind} '{value}'") from exc

    def _check_tag(self, node: Node, allowed: set[str] | frozenset[str]) -> None:
        tag = _tag(node)
        if tag not in allowed:
            raise RuleFileError(
                self.path,
                _line(node),
                f"unsupported YAML tag '{tag.replace(_TAG_PREFIX, '!!')}'",
                "remove the tag: rule files hold only strings, numbers, booleans, lists, mappings",
            )


def _int(text: str) -> int:
    digits = text.replace("_", "")
    if digits.lstrip("+-")[:2].lower() in ("0x", "0o", "0b"):
        return int(digits, 0)
    return int(digits, 10)


def _float(text: str) -> float:
    lowered = text.replace("_", "").lower()
    if lowered.lstrip("+-") in (".inf", ".nan"):
        return float(lowered.replace(".", ""))
    return float(lowered)
