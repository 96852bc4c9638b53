"""edge.yaml: documented defaults, every mistake a precise ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.edge.config import default_intra_op_threads, edge_config_from_dict, load_edge_config
from tandem.errors import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "edge.yaml"


def test_defaults_are_valid():
    config = load_edge_config(None)
    assert config.cloud.addresses == ("127.0.0.1:50051",)
    assert config.socket_mode == 0o600
    assert config.policy.policy == "cost_model"


def test_onnx_runtime_leaves_one_core_to_the_app_and_the_agents_io(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("psutil.cpu_count", lambda logical=True: 4 if logical else 2)
    assert default_intra_op_threads() == 1  # 2 physical cores of 4 hyperthreads
    monkeypatch.setattr("psutil.cpu_count", lambda logical=True: 8 if logical else 8)
    assert default_intra_op_threads() == 3  # only 4 cores are ours (affinity)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert default_intra_op_threads() == 1  # never 0: that would mean "every core"
    assert load_edge_config(None).session.intra_op_threads == 1
    # the default fills in only what the file leaves out
    config = edge_config_from_dict({"session": {"allow_spinning": False}})
    assert config.session.intra_op_threads == 1 and not config.session.allow_spinning
    assert edge_config_from_dict({"session": {"intra_op_threads": 0}}).session.intra_op_threads == 0


def test_shipped_example_parses(monkeypatch):
    monkeypatch.setenv("TANDEM_TOKEN", "secret")
    config = load_edge_config(DEPLOY)
    assert config.socket_mode == 0o600
    assert config.cloud.tls and config.cloud.bearer_token() == "secret"
    assert config.policy.hedge


@pytest.mark.parametrize(
    "data, message",
    [
        ({"colour": 1}, "edge.yaml: unknown key colour (known keys: bundle, socket, "),
        (
            {"cloud": {"deadlin_s": 1}},
            "unknown key cloud.deadlin_s (did you mean cloud.deadline_s?)",
        ),
        ({"cloud": {"deadline_s": -1}}, "edge.yaml: cloud.deadline_s must be > 0, got -1"),
        ({"cloud": {"deadline_s": "soon"}}, "cloud.deadline_s must be a number, got 'soon'"),
        ({"cloud": {"addresses": ["nohost"]}}, "cloud.addresses[0] must be 'HOST:PORT'"),
        ({"cloud": {"addresses": ["h:0"]}}, "cloud.addresses[0] needs a port, got 'h:0'"),
        ({"cloud": {"addresses": []}}, "addresses must be a non-empty list"),
        ({"cloud": {"codec": "int4"}}, "cloud.codec"),
        ({"cloud": {"max_attempts": 0}}, "max_attempts must be in [1, 10]"),
        (
            {"cloud": {"breaker": {"failure_threshold": 0}}},
            "breaker.failure_threshold must be >= 1",
        ),
        (
            {"cloud": {"breaker": {"failure_threshold": 1.5}}},
            "failure_threshold must be an integer",
        ),
        ({"cloud": {"token": "a", "token_env": "B"}}, "not both"),
        ({"cloud": {"ca_file": "/nonexistent/ca.pem"}}, "no such file"),
        ({"cloud": {"cert_file": "x"}}, "cloud.cert_file and key_file go together"),
        ({"tcp": "0.0.0.0:5000"}, "tcp must be a loopback address"),
        ({"socket": "", "tcp": None}, "needs a socket path or a tcp address"),
        ({"socket_mode": "rw"}, "socket_mode must be octal"),
        ({"policy": {"policy": "fastest"}}, "policy must be one of"),
        ({"session": {"providers": ["NoSuchProvider"]}}, "not available"),
        ({"session": ["threads"]}, "session must be a mapping of keys, got ['threads']"),
        ({"session": {"intra_op_threads": -1}}, "intra_op_threads must be >= 0, got -1"),
        ({"device_speed_factor": 0}, "device_speed_factor must be > 0, got 0"),
        ({"network_type": "satellite"}, "network_type must be one of ['3g', '5g', 'lte', 'wifi']"),
        ({"cloud": {"ping_timeout_s": 0}}, "cloud.ping_timeout_s must be > 0, got 0"),
        (
            {"cloud": {"ping_timeout_s": 3}},
            "cloud.ping_timeout_s (3.0) must not exceed ping_interval_s (2.0)",
        ),
        ({"socket": 5}, "edge.yaml: socket must be a string, got 5"),
        ({"tcp": 5}, "edge.yaml: tcp must be a 'HOST:PORT' string, got 5"),
        ({"bundle": 5}, "edge.yaml: bundle must be a string, got 5"),
        ({"cloud": 5}, "edge.yaml: cloud must be a mapping of keys, got 5"),
        ({"cloud": {"tls": "yes"}}, "cloud.tls must be true or false, got 'yes'"),
        ({"max_concurrent": True}, "max_concurrent must be an integer, got true"),
        ({"drain_s": float("nan")}, "drain_s must be a finite number, got nan"),
        ({"socket_mode": "7" * 100_000}, "socket_mode must be a permission number"),
        ("just a string", "top level must be a mapping"),
    ],
)
def test_each_mistake_is_named(data, message):
    with pytest.raises(ConfigError) as info:
        edge_config_from_dict(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_missing_token_env_is_reported(monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    config = edge_config_from_dict({"cloud": {"token_env": "NO_SUCH_TOKEN_VAR"}})
    with pytest.raises(ConfigError, match="NO_SUCH_TOKEN_VAR is unset"):
        config.cloud.bearer_token()


def test_unreadable_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_edge_config(tmp_path / "missing.yaml")
    bad = tmp_path / "edge.yaml"
    bad.write_text("cloud: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_edge_config(bad)


def test_ping_timeout_defaults_to_one_second_or_the_interval():
    assert load_edge_config(None).cloud.effective_ping_timeout_s == 1.0
    fast = edge_config_from_dict({"cloud": {"ping_interval_s": 0.5}}).cloud
    assert fast.effective_ping_timeout_s == 0.5
    set_ = edge_config_from_dict({"cloud": {"ping_timeout_s": 0.2}}).cloud
    assert set_.effective_ping_timeout_s == 0.2
