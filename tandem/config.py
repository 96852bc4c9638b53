"""Config building: a YAML mapping becomes a frozen dataclass, driven by the field types.

Every config (``edge.yaml``, ``cloud.yaml``, the policy config, ONNX Runtime session options)
is a frozen dataclass with a docstring on each field. ``build(cls, data, where)`` turns the
mapping a person wrote into one, in one way for all of them:

- the **field types** say what a key accepts: ``bool``, ``int``, ``float`` (an integer is
  taken, infinity and NaN are not), ``str``, ``X | None``, ``tuple[X, ...]``/``list[X]`` (from
  a YAML list), ``Literal[...]``, a nested config dataclass (from a mapping; an empty section
  means its defaults), and value types with a ``from_config(value)`` classmethod (``Address``,
  ``FileMode``);
- **bounds** live in the dataclass's own ``__post_init__`` (``bound``, ``require``), so a
  config built in code is checked as one loaded from a file;
- **unknown keys** are refused, with the close match when there is one: a misspelt
  ``deadline_s`` must not silently fall back to its default on a fleet of devices;
- every problem is **one line** naming the file and the dotted key, with the value cut short:
  ``edge.yaml: cloud.deadline_s must be > 0, got -1``.

A check inside ``__post_init__`` raises ``ConfigError`` with a message that starts with the
field's own name (``"deadline_s must be > 0, got -1"``); ``build`` puts the file and the path of
the section in front of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import math
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from tandem.errors import ConfigError

T = TypeVar("T")

ONE_OR_MANY = {"tandem.config.one_or_many": True}
"""Field metadata: a list field that also takes a single value for a one-element list."""

MAX_SHOWN_CHARS = 60
"""Longest rendering of a value in a message: a hostile file must not produce a huge line."""

_repr = reprlib.Repr()
_repr.maxstring = MAX_SHOWN_CHARS
_repr.maxother = MAX_SHOWN_CHARS
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxlevel = 2


def shown(value: Any) -> str:
    """``value`` as a message shows it: YAML's words for null and booleans, else a short repr.

    The cost is bounded whatever the value is (``reprlib`` stops at a few items and levels), and
    so is the length.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = _repr.repr(value)
    if len(text) > MAX_SHOWN_CHARS:
        text = text[: MAX_SHOWN_CHARS - 3] + "..."
    return text


# ---------------------------------------------------------------------------------------------
# Checks for __post_init__.


def require(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``; the message starts with the field name."""
    if not ok:
        raise ConfigError(message)


def bound(
    config: Any,
    *names: str,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> None:
    """Each named field of ``config`` lies within the bounds: ``"x must be > 0, got -1"``.

    NaN lies within no bounds. Two bounds read as an interval: ``ge=1, le=10`` is ``[1, 10]``.
    """
    low, low_ok = (gt, lambda v: v > gt) if gt is not None else (ge, lambda v: v >= ge)
    high, high_ok = (lt, lambda v: v < lt) if lt is not None else (le, lambda v: v <= le)
    if low is not None and high is not None:
        wanted = f"in {'(' if gt is not None else '['}{low}, {high}{')' if lt is not None else ']'}"
    elif low is not None:
        wanted = f"{'>' if gt is not None else '>='} {low}"
    elif high is not None:
        wanted = f"{'<' if lt is not None else '<='} {high}"
    else:
        raise TypeError("bound() needs at least one of gt, ge, lt, le")
    for name in names:
        value = getattr(config, name)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and not (isinstance(value, float) and math.isnan(value))
        ok = ok and (low is None or low_ok(value)) and (high is None or high_ok(value))
        require(ok, f"{name} must be {wanted}, got {shown(value)}")


def one_of(config: Any, name: str, choices: typing.Iterable[str]) -> None:
    """The named field of ``config`` is one of ``choices``."""
    value = getattr(config, name)
    choices = list(choices)
    require(value in choices, f"{name} must be one of {choices}, got {shown(value)}")


# ---------------------------------------------------------------------------------------------
# Value types.


class Address(str):
    """A ``HOST:PORT`` (``[v6]:PORT`` for IPv6), checked once, kept as the text gRPC takes.

    A string, so it goes wherever an address string goes (gRPC targets, ``add_insecure_port``,
    comparisons with ``"127.0.0.1:50051"``); ``host`` and ``port`` are its parts. Port 0 is
    accepted: a server asks the OS for a free port with it (tests, benchmarks).
    """

    __slots__ = ()

    def __new__(cls, value: Any) -> Address:
        host, port = _split_address(value)
        return super().__new__(cls, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    @classmethod
    def from_config(cls, value: Any) -> Address:
        return cls(value)

    @property
    def host(self) -> str:
        return _split_address(str(self))[0]

    @property
    def port(self) -> int:
        return _split_address(str(self))[1]

    @property
    def is_loopback(self) -> bool:
        """Only reachable from this machine: safe to serve without authentication."""
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name may resolve to anything

    def with_port(self, port: int) -> Address:
        host = self.host
        return Address(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def _split_address(value: Any) -> tuple[str, int]:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be a 'HOST:PORT' string, got {shown(value)}")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
        if ":" in host:
            raise ConfigError(f"must be written '[addr]:PORT' for IPv6, got {shown(value)}")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"must be 'HOST:PORT' with a port in [0, 65535], got {shown(value)}")
    return host, int(port)


class FileMode(int):
    """Permission bits of a file, e.g. ``0o600``.

    YAML 1.1 reads ``0600`` as an octal number but ``0o600`` as a string; both spellings are
    what people write, so both are taken.
    """

    __slots__ = ()

    @classmethod
    def from_config(cls, value: Any) -> FileMode:
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise ConfigError(f"must be octal like 0o600, got {shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
            raise ConfigError(f"must be a permission number like 0o600, got {shown(value)}")
        return cls(value)


# ---------------------------------------------------------------------------------------------
# Building.


def build(cls: type[T], data: Any, where: str, key: str = "") -> T:
    """The ``cls`` config that ``data`` (a loaded YAML mapping) describes.

    ``where`` names the file (``"edge.yaml"``) and ``key`` the section ``data`` came from
    (``"cloud"``, empty for the top level). None is an empty section: every default. Raises one
    ``ConfigError`` naming both, for the first problem found.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        what = key or "top level"
        raise ConfigError(f"{where}: {what} must be a mapping of keys, got {shown(data)}")
    fields = _fields(cls)
    for name in data:
        if name not in fields:
            raise ConfigError(f"{where}: {_unknown(name, list(fields), key)}")
    values = {}
    for name, value in data.items():
        tp, field = fields[name]
        values[name] = _convert(tp, field.metadata, value, where, _join(key, name))
    try:
        return cls(**values)
    except ConfigError as exc:  # from cls.__post_init__: the message starts with a field name
        raise ConfigError(f"{where}: {_join(key, str(exc))}") from None


def merged(data: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``overrides`` laid over it, section by section; None overrides nothing."""
    result = dict(data or {})
    for name, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(result.get(name), Mapping):
            value = merged(result[name], value)
        result[name] = value
    return result


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _unknown(name: Any, known: list[str], key: str) -> str:
    plain = isinstance(name, str) and name.isprintable() and len(name) <= MAX_SHOWN_CHARS
    shown_name = name if plain else shown(name)  # a repr escapes line breaks
    close = (
        difflib.get_close_matches(shown_name, known, n=1, cutoff=0.75)
        if isinstance(name, str)
        else []
    )
    if close:
        hint = f"did you mean {_join(key, close[0])}?"
    else:
        hint = f"known keys{' of ' + key if key else ''}: {', '.join(known)}"
    return f"unknown key {_join(key, shown_name)} ({hint})"


@functools.cache
def _fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    """Field name -> (resolved type, field) of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls) if f.init}


def _convert(tp: Any, metadata: Mapping[str, Any], value: Any, where: str, key: str) -> Any:
    try:
        return _value(tp, value, where, key, metadata)
    except _Mismatch as exc:
        raise ConfigError(f"{where}: {key} must be {exc}, got {shown(value)}") from None


class _Mismatch(Exception):
    """The value is not of the kind the field takes; the message says which kind that is."""


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _value(tp: Any, value: Any, where: str, key: str, metadata: Mapping[str, Any]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) != 1:
            raise TypeError(f"{key}: config fields may only be X or X | None, not {tp}")
        return _value(options[0], value, where, key, metadata)
    if origin is typing.Literal:
        if not any(type(value) is type(a) and value == a for a in args):
            raise _Mismatch(f"one of {list(args)}")
        return value
    if origin in (tuple, list):
        if args[1:] != ((Ellipsis,) if origin is tuple else ()):
            raise TypeError(f"{key}: config lists are tuple[X, ...] or list[X], not {tp}")
        item = args[0]
        if not isinstance(value, list | tuple):
            if not metadata.get("tandem.config.one_or_many") or value is None:
                raise _Mismatch("a list")
            value = [value]
        items = [_convert(item, {}, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, key)
    if hasattr(tp, "from_config"):
        try:
            return tp.from_config(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {key} {exc}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Mismatch("a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise _Mismatch("a finite number") from None
        if not math.isfinite(number):
            raise _Mismatch("a finite number")
        return number
    if tp in _KINDS:
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise _Mismatch(_KINDS[tp])
        if tp is int and value.bit_length() > 63:  # no count or size is that large
            raise _Mismatch("an integer of at most 63 bits")
        return value
    raise TypeError(f"{key}: no rule builds a {tp} from YAML")


__all__ = [
    "ONE_OR_MANY",
    "Address",
    "FileMode",
    "bound",
    "build",
    "merged",
    "one_of",
    "require",
    "shown",
]
