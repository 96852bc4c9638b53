"""The config builder: field types drive the parsing, bounds live in __post_init__, every
problem is one line naming the file and the key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.cloud.config import parse_cloud_config
from tandem.config import (
    ONE_OR_MANY,
    Address,
    FileMode,
    bound,
    build,
    merged,
    one_of,
    require,
    shown,
)
from tandem.edge.config import EdgeConfig, edge_config_from_dict
from tandem.errors import ConfigError
from tandem.policy import PolicyConfig


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    """A bounded number."""
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bound(self, "rate", gt=0, le=1)


@dataclass(frozen=True)
class Outer:
    flag: bool = False
    count: int = 3
    label: str | None = None
    mode: Literal["a", "b"] = "a"
    items: list[int] = field(default_factory=list)
    targets: tuple[Address, ...] = field(default=(), metadata=ONE_OR_MANY)
    perms: FileMode = FileMode(0o600)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        bound(self, "count", ge=1)
        require(self.label != "bad", "label may not be 'bad'")


def error_of(data, cls=Outer) -> str:
    with pytest.raises(ConfigError) as info:
        build(cls, data, "test.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_each_field_type_takes_its_yaml_spelling():
    config = build(
        Outer,
        {
            "flag": True,
            "count": 5,
            "label": None,
            "mode": "b",
            "items": [1, 2],
            "targets": "[::1]:5",
            "perms": "0o640",
            "inner": {"rate": 1, "names": ["x"]},
        },
        "test.yaml",
    )
    assert config.flag is True and config.count == 5 and config.label is None
    assert config.mode == "b" and config.items == [1, 2]
    assert config.targets == ("[::1]:5",) and config.targets[0].port == 5
    assert config.perms == 0o640
    assert config.inner == Inner(rate=1.0, names=("x",)) and isinstance(config.inner.rate, float)
    assert build(Outer, None, "test.yaml") == Outer()
    assert build(Outer, {"inner": None}, "test.yaml").inner == Inner()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"flag": "yes"}, "test.yaml: flag must be true or false, got 'yes'"),
        ({"count": True}, "test.yaml: count must be an integer, got true"),
        ({"count": 2.0}, "test.yaml: count must be an integer, got 2.0"),
        ({"count": 2**63}, "count must be an integer of at most 63 bits, got 9223372036854775808"),
        ({"count": 0}, "test.yaml: count must be >= 1, got 0"),
        ({"label": 5}, "test.yaml: label must be a string, got 5"),
        ({"label": "bad"}, "test.yaml: label may not be 'bad'"),
        ({"mode": "c"}, "test.yaml: mode must be one of ['a', 'b'], got 'c'"),
        ({"items": 5}, "test.yaml: items must be a list, got 5"),
        ({"items": [1, "x"]}, "test.yaml: items[1] must be an integer, got 'x'"),
        ({"targets": [None]}, "test.yaml: targets[0] must be a 'HOST:PORT' string, got null"),
        ({"perms": "rw"}, "test.yaml: perms must be octal like 0o600, got 'rw'"),
        ({"inner": 3}, "test.yaml: inner must be a mapping of keys, got 3"),
        ({"inner": {"rate": 0}}, "test.yaml: inner.rate must be in (0, 1], got 0.0"),
        ({"inner": {"rate": float("inf")}}, "inner.rate must be a finite number, got inf"),
        ({"inner": {"rate": 10**400}}, "inner.rate must be a finite number, got an integer of"),
        ({"inner": {"rat": 1}}, "test.yaml: unknown key inner.rat (did you mean inner.rate?)"),
        ({"zzz": 1}, "test.yaml: unknown key zzz (known keys: flag, count, label, mode, items,"),
        ({1: 1}, "test.yaml: unknown key 1 (known keys:"),
        ({"a\nb": 1}, "test.yaml: unknown key 'a\\nb' (known keys:"),
        ([1, 2], "test.yaml: top level must be a mapping of keys, got [1, 2]"),
    ],
)
def test_each_problem_is_one_line_naming_file_and_key(data, message):
    assert message in error_of(data)


def test_values_in_messages_are_cut_short():
    huge = ["x" * 1_000_000] * 1000
    message = error_of({"label": huge})
    assert message.startswith("test.yaml: label must be a string, got [") and len(message) < 200
    assert shown(10**5000) == "an integer of 16610 bits"
    assert len(error_of({"x" * 100_000: 1})) < 300


def test_bounds_read_as_intervals_and_refuse_nan():
    @dataclass(frozen=True)
    class Numbers:
        a: float = 0.5
        b: int = 5

    for kwargs, text in [
        ({"gt": 0}, "> 0"),
        ({"ge": 0}, ">= 0"),
        ({"lt": 1}, "< 1"),
        ({"le": 1}, "<= 1"),
        ({"gt": 0, "le": 1}, "in (0, 1]"),
        ({"ge": 1, "le": 10}, "in [1, 10]"),
        ({"ge": 0, "lt": 1}, "in [0, 1)"),
    ]:
        with pytest.raises(ConfigError, match=rf"^a must be {re.escape(text)}, got"):
            bound(Numbers(a=float("nan")), "a", **kwargs)
    bound(Numbers(), "a", "b", ge=0)
    with pytest.raises(ConfigError, match="b must be in \\[0.5, 4\\], got 5"):
        bound(Numbers(), "a", "b", ge=0.5, le=4)
    with pytest.raises(ConfigError, match="^a must be one of \\['x'\\], got 0.5"):
        one_of(Numbers(), "a", ["x"])


def test_a_config_built_in_code_is_checked_too():
    with pytest.raises(ConfigError, match="^count must be >= 1, got 0"):
        Outer(count=0)
    with pytest.raises(ConfigError, match="^deadline_s must be > 0, got -1"):
        from tandem.edge.config import CloudSettings

        CloudSettings(deadline_s=-1)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:50051", "127.0.0.1", 50051),
        ("localhost:0", "localhost", 0),
        ("[::1]:5", "::1", 5),
        ("decoder.example.internal:443", "decoder.example.internal", 443),
    ],
)
def test_address_parts_and_text(text, host, port):
    address = Address(text)
    assert address == text and str(address) == text
    assert (address.host, address.port) == (host, port)
    assert Address(address) == address and address.with_port(7).port == 7


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("nohost", "with a port in [0, 65535]"),
        (":5", "with a port in [0, 65535]"),
        ("h:65536", "with a port in [0, 65535]"),
        ("h:-1", "with a port in [0, 65535]"),
        ("h:٣", "with a port in [0, 65535]"),
        ("::1:5", "'[addr]:PORT' for IPv6"),
        ("", "'HOST:PORT' string"),
        (5, "'HOST:PORT' string"),
    ],
)
def test_address_refuses_what_is_not_host_port(value, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        Address(value)


def test_address_loopback():
    assert Address("[::1]:5").is_loopback and Address("localhost:5").is_loopback
    assert Address("127.0.0.2:5").is_loopback
    assert not Address("0.0.0.0:5").is_loopback and not Address("example.com:5").is_loopback
    assert Address("[::]:5").with_port(9) == "[::]:9"


def test_file_mode():
    assert FileMode.from_config("0o600") == FileMode.from_config(384) == 0o600
    assert FileMode.from_config("644") == 0o644
    for bad in (0o1000, -1, True, 1.5, None):
        with pytest.raises(ConfigError, match="permission number"):
            FileMode.from_config(bad)


def test_merged_overrides_section_by_section():
    data = {"a": 1, "cloud": {"x": 1, "y": 2}}
    assert merged(data, {"a": None, "cloud": {"y": 3}, "b": 2}) == {
        "a": 1,
        "cloud": {"x": 1, "y": 3},
        "b": 2,
    }
    assert merged(None, {"cloud": {"y": 3}}) == {"cloud": {"y": 3}}
    assert data == {"a": 1, "cloud": {"x": 1, "y": 2}}, "the input is left alone"


def test_a_field_type_without_a_rule_is_a_programming_error():
    @dataclass(frozen=True)
    class Odd:
        pair: tuple[int, str] = (1, "a")

    with pytest.raises(TypeError, match="tuple\\[X, ...\\]"):
        build(Odd, {"pair": [1, "a"]}, "test.yaml")


def yaml_collections(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(children, max_size=3) | st.dictionaries(
        st.text(max_size=8), children, max_size=3
    )


yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(2**70)])
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["127.0.0.1:5", "0o600", "int8", "cost_model", "text", ""]),
    yaml_collections,
    max_leaves=8,
)


def mappings_for(cls) -> st.SearchStrategy:
    """Mappings over ``cls``'s own keys (and a stray one) with any YAML values."""
    names = list(cls.__dataclass_fields__) + ["stray"]
    return st.dictionaries(st.sampled_from(names), yaml_values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(data=mappings_for(EdgeConfig) | st.builds(lambda c: {"cloud": c}, mappings_for(EdgeConfig)))
def test_any_edge_mapping_is_a_config_or_one_config_error(data):
    """Invariant: whatever a file holds, building it gives an EdgeConfig or one ConfigError
    line naming edge.yaml; never TypeError, AttributeError or a traceback."""
    try:
        assert isinstance(edge_config_from_dict(data), EdgeConfig)
    except ConfigError as exc:
        assert str(exc).startswith("edge.yaml: ") and "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(
        st.sampled_from(["policy", "codec", "estimators", "length", "x"]), yaml_values, max_size=3
    )
)
def test_any_policy_and_cloud_mapping_is_a_config_or_one_config_error(data):
    for parse in (
        lambda d: PolicyConfig.from_dict(d, "p.yaml"),
        lambda d: parse_cloud_config(d, "p.yaml"),
    ):
        try:
            parse(data)
        except ConfigError as exc:
            assert str(exc).startswith("p.yaml: ") and "\n" not in str(exc)


def documented_keys(cls, prefix: str = "", stop: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys of ``cls``, sections named in ``stop`` left whole (documented apart)."""
    import dataclasses
    import typing

    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and f.name not in stop:
            keys += documented_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_every_key_is_documented():
    from pathlib import Path

    from tandem.cloud.config import CloudConfig
    from tandem.runtime.options import SessionConfig

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    keys = (
        documented_keys(EdgeConfig, stop=("session", "policy"))
        + documented_keys(CloudConfig, stop=("session",))
        + documented_keys(PolicyConfig)
        + documented_keys(SessionConfig)
    )
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"keys missing from docs/configuration.md: {missing}"
