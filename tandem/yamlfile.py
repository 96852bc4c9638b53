"""Reading a YAML file, one way for every file a person writes: each problem names the file.

Configs (``edge.yaml``, ``cloud.yaml``, ``--policy-config``), profiles, token files and bundle
manifests are YAML written or edited by people. Each reader once caught its own subset of
what goes wrong — a missing file, bytes that are not UTF-8, a syntax error — and worded it its
own way; one caught only the first, so a typo in a device profile stopped the agent with a
YAML traceback. Here every such problem is the caller's ``TandemError`` (``ConfigError`` by
default), worded the same and naming what the file is for and where it is. What the document
*means* is the caller's to validate.

Reading is bounded, because a config file can come from anyone who can write to a ConfigMap or
a device's disk: at most ``MAX_YAML_BYTES`` bytes, ``MAX_YAML_DEPTH`` levels of nesting and
``MAX_YAML_NODES`` nodes, where an alias counts as every node it stands for. So a 526-byte
alias bomb (a billion nodes once expanded) and 20,000 nested ``[`` are refused in milliseconds
with one line, instead of running out of memory or the interpreter's stack. Every message is
one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tandem.errors import ConfigError, TandemError

MAX_YAML_BYTES = 1 << 20
"""Largest YAML file read (1 MiB): configs, profiles, manifests and token files are far smaller."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of lists and mappings; the deepest shipped file has 4 levels."""
MAX_YAML_NODES = 100_000
"""Most nodes in one document, an alias counting as all the nodes it stands for."""
MAX_MESSAGE_CHARS = 300
"""A YAML syntax error is cut to this length: it quotes the offending text."""


class _Refused(yaml.YAMLError):
    """A document over the limits; raised while composing, before any Python object exists."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts nesting depth and nodes as it composes the document.

    Aliases are not refused (anchors are a fine way to share a section) but counted at the size
    of what they refer to, which is exactly what a consumer walking the result would pay.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._anchored: dict[int, int] = {}  # id(anchored node) -> nodes it stands for

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner reads ahead while a simple key may be pending, so without this check
        # 20,000 '[' cost it a quadratic few hundred milliseconds before the composer counts.
        if self.flow_level >= MAX_YAML_DEPTH:
            mark = self.get_mark()
            raise _Refused(
                f"nested deeper than {MAX_YAML_DEPTH} levels"
                f" at line {mark.line + 1}, column {mark.column + 1}"
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._anchored.get(id(node), 1), event)
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels{_at(event)}")
        before = self._nodes
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, event)
        if event.anchor is not None:
            self._anchored[id(node)] = self._nodes - before
        return node

    def _count(self, nodes: int, event: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            raise _Refused(
                f"more than {MAX_YAML_NODES} nodes (aliases counted as what they expand to)"
                f"{_at(event)}"
            )


def _at(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _one_line(exc: Exception) -> str:
    """A YAML error in one line: what was wrong and where (PyYAML's own spans several)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        mark = exc.problem_mark or exc.context_mark
        text = "; ".join(parts) or "syntax error"
        if mark is not None:
            text += f" at line {mark.line + 1}, column {mark.column + 1}"
    else:
        text = str(exc)
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


def read_yaml(path: str | Path, what: str, error: type[TandemError] = ConfigError) -> Any:
    """The YAML document in ``path`` (None for an empty file).

    ``what`` says what the file is for (``"device profile"``): messages read
    ``"device profile /etc/tandem/device.yaml: not valid YAML: ..."``.
    """
    path = Path(path)
    where = f"{what} {path}"
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{where}: larger than {MAX_YAML_BYTES} bytes; not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text: {exc}") from exc
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise error(f"{where}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {_one_line(exc)}") from None
    except (ValueError, OverflowError) as exc:  # a scalar YAML matched but Python refused
        raise error(f"{where}: not valid YAML: {_one_line(exc)}") from None
    except RecursionError:  # a backstop: the depth limit stops nesting long before this
        raise error(f"{where}: refused: nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_mapping(
    path: str | Path, what: str, error: type[TandemError] = ConfigError
) -> dict[str, Any]:
    """``read_yaml`` for files whose top level is a mapping of keys; an empty file is ``{}``."""
    data = read_yaml(path, what, error)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(
            f"{what} {Path(path)}: top level must be a mapping of keys, got {type(data).__name__}"
        )
    return data


__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "read_yaml", "read_yaml_mapping"]
