"""YAML with line and column for every node (ruamel.yaml round-trip, YAML 1.2: no Norway problem)."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError

from ..core.errors import Diagnostic


class _Constructor(RoundTripConstructor):
    """A timestamp-shaped scalar that is no date (`effective: 2026-13-45`) stays text, so the rule loader can
    say where it is and what is wrong, instead of the parser failing the whole file at line 1."""

    def construct_yaml_timestamp(self, node: Any, values: Any = None) -> Any:
        try:
            return super().construct_yaml_timestamp(node, values)
        except ValueError:
            return self.construct_scalar(node)


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_timestamp)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a line an author wrote
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


_PARSED: OrderedDict[bytes, Any] = OrderedDict()
_PARSED_MAX = 2048  # documents; a pack is ~200 files, so several versions of a few packs
_PARSED_LOCK = threading.Lock()


def load(path: Path, *, shared: bool = False) -> tuple[Any, list[Diagnostic]]:
    """Parse one file; a syntax error becomes a Diagnostic at the parser's mark.

    shared=True returns a parse shared with every other caller that read the same bytes, so the caller must treat
    it as read-only. The round-trip parser is pure Python (~15 ms a file); a reload or `impact` run re-reads a pack
    in which only a few files changed, and this keeps that to the changed files.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Diagnostic(str(path), 1, 1, "unreadable-file", str(exc))]
    key = hashlib.sha256(text.encode("utf-8")).digest() if shared else b""
    if shared:
        with _PARSED_LOCK:
            if key in _PARSED:
                _PARSED.move_to_end(key)
                return _PARSED[key], []
    try:
        data = _yaml().load(text)
        if shared:
            with _PARSED_LOCK:
                _PARSED[key] = data
                while len(_PARSED) > _PARSED_MAX:
                    _PARSED.popitem(last=False)
        return data, []
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        if exc.context_mark is not None and mark is not exc.context_mark:
            opened = exc.context_mark
            message += f" (the construct opened at line {opened.line + 1}, column {opened.column + 1})"
        return None, [Diagnostic(str(path), line, col, "yaml-syntax", message or "invalid YAML")]
    except Exception as exc:  # ruamel raises plain errors for some malformed input
        return None, [Diagnostic(str(path), 1, 1, "yaml-syntax", f"invalid YAML: {exc}")]


def dump(data: Any) -> str:
    stream = StringIO()
    _yaml().dump(data, stream)
    return stream.getvalue()


def key_pos(node: Any, key: Any) -> tuple[int, int]:
    """1-based position of a mapping key (or of the mapping itself when the key is absent)."""
    if isinstance(node, CommentedMap):
        try:
            line, col = node.lc.key(key)
            return line + 1, col + 1
        except (KeyError, TypeError):
            return node.lc.line + 1, node.lc.col + 1
    return 1, 1


def value_pos(node: Any, key: Any) -> tuple[int, int]:
    if isinstance(node, CommentedMap):
        try:
            line, col = node.lc.value(key)
            return line + 1, col + 1
        except (KeyError, TypeError):
            return key_pos(node, key)
    if isinstance(node, CommentedSeq) and isinstance(key, int):
        try:
            line, col = node.lc.item(key)
            return line + 1, col + 1
        except (KeyError, TypeError, IndexError):
            return node.lc.line + 1, node.lc.col + 1
    return 1, 1


def node_pos(node: Any) -> tuple[int, int]:
    if isinstance(node, (CommentedMap, CommentedSeq)):
        return node.lc.line + 1, node.lc.col + 1
    return 1, 1


def plain(node: Any) -> Any:
    """Round-trip nodes to plain Python; timestamps become ISO strings."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, dt.datetime):
        if node.tzinfo is None and getattr(node, "_yaml", None) and node._yaml.get("tz"):  # type: ignore[attr-defined]
            return node.isoformat()
        return node.isoformat() if node.tzinfo else node.replace(tzinfo=dt.UTC).isoformat()
    if isinstance(node, dt.date):
        return node.isoformat()
    if isinstance(node, str):
        return str(node)
    return node
