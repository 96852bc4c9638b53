"""cloud.yaml and token files: validated once, errors name the key and the value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tandem.cloud.auth import (
    Authenticator,
    PermissionDenied,
    Unauthenticated,
    load_tokens,
    parse_tokens,
    parse_tokens_env,
    peer_host,
)
from tandem.cloud.config import AuthConfig, load_cloud_config, parse_address, parse_cloud_config
from tandem.errors import ConfigError

TOKEN = "0123456789abcdef-token"


def test_defaults_serve_the_default_model_on_loopback():
    config = parse_cloud_config({})
    assert str(config.listen) == "127.0.0.1:50051"
    assert config.bundles == () and not config.authenticates
    assert config.scheduler.max_batch >= 16
    assert config.scheduler.stream_interval_ms == 20
    assert config.scheduler.stream_hold_max_ms == 200
    # A config from before stream_interval_max_ms, with a longer interval, still loads.
    longer = parse_cloud_config({"scheduler": {"stream_interval_ms": 300}}).scheduler
    assert longer.stream_hold_max_ms == 300
    assert (
        parse_cloud_config({"scheduler": {"stream_interval_ms": 0}}).scheduler.stream_interval_ms
        == 0
    )


@pytest.mark.parametrize(
    "data, words",
    [
        ({"listen": "nope"}, ["listen", "nope"]),
        ({"listen": "1.2.3.4:99999"}, ["listen", "99999"]),
        ({"scheduler": {"max_batch": 0}}, ["scheduler.max_batch", "0"]),
        ({"scheduler": {"max_btach": 4}}, ["scheduler.max_btach"]),
        ({"scheduler": {"stream_interval_ms": -5}}, ["scheduler.stream_interval_ms", "-5"]),
        ({"scheduler": {"stream_cpu_share": 1.5}}, ["scheduler.stream_cpu_share", "1.5"]),
        (
            {"scheduler": {"stream_interval_ms": 300, "stream_interval_max_ms": 200}},
            ["stream_interval_max_ms (200)", "stream_interval_ms (300)"],
        ),
        ({"limits": {"default_deadline_s": -1}}, ["limits.default_deadline_s", "-1"]),
        ({"grace_period_s": "soon"}, ["grace_period_s", "soon"]),
        ({"log_format": "xml"}, ["log_format", "xml"]),
        ({"bundles": "one"}, ["bundles"]),
        ({"session": {"intra_op_threads": -2}}, ["intra_op_threads", "-2"]),
        ({"tls": {"cert_file": "c.pem"}}, ["tls.cert_file", "tls.key_file"]),
        ({"surprise": 1}, ["surprise"]),
        ({"limits": {"first_message_timeout_s": 0}}, ["limits.first_message_timeout_s", "0"]),
        ({"limits": {"max_waiting_calls": 0}}, ["limits.max_waiting_calls", "0"]),
        ({"limits": {"max_health_calls": 1.5}}, ["limits.max_health_calls", "1.5"]),
        ({"server": {"max_concurrent_streams": 2.5}}, ["server.max_concurrent_streams"]),
        ({"metrics_public": "yes"}, ["metrics_public", "yes"]),
    ],
)
def test_bad_values_name_the_key_and_value(data, words):
    with pytest.raises(ConfigError) as info:
        parse_cloud_config(data, "cloud.yaml")
    assert str(info.value).startswith("cloud.yaml: ")
    for word in words:
        assert word in str(info.value)


def test_refuses_non_loopback_without_auth_and_says_why():
    with pytest.raises(ConfigError, match="not a loopback address and no authentication"):
        parse_cloud_config({"listen": "0.0.0.0:50051"})
    with pytest.raises(ConfigError, match="clear text"):
        parse_cloud_config({"listen": "0.0.0.0:50051", "auth": {"tokens_env": "T"}})
    parse_cloud_config(
        {"listen": "0.0.0.0:50051", "auth": {"tokens_env": "T", "allow_plaintext_tokens": True}}
    )
    parse_cloud_config(
        {"listen": "[::]:50051", "tls": {"cert_file": "c", "key_file": "k", "client_ca_file": "ca"}}
    )
    assert (
        parse_address("[::1]:5", "x").is_loopback and parse_address("localhost:5", "x").is_loopback
    )


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "cloud.yaml"
    path.write_text("listen: 127.0.0.1:7000\nscheduler: {max_batch: 4}\n", encoding="utf-8")
    config = load_cloud_config(path, listen="127.0.0.1:7001", bundles=["a", "b"])
    assert config.listen.port == 7001 and config.bundles == ("a", "b")
    assert config.scheduler.max_batch == 4
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cloud.yaml: top level must be a mapping"):
        load_cloud_config(path)


def test_token_sources_and_authenticator(tmp_path):
    file = tmp_path / "tokens.yaml"
    file.write_text(f"phone-1: {TOKEN}\nphone-2: {{token: {TOKEN}-2, models: [sha256:x]}}\n")
    tokens = load_tokens(
        AuthConfig(tokens_file=str(file), tokens_env="T"), {"T": f"kiosk={TOKEN}-3"}
    )
    auth = Authenticator(tokens, require_token=True)
    bearer = lambda token: [("authorization", f"Bearer {token}")]  # noqa: E731
    assert auth.authenticate(bearer(TOKEN), None, "ipv4:1.2.3.4:5").client == "device:phone-1"
    assert auth.authenticate(bearer(f"{TOKEN}-3"), None, "").device_id == "kiosk"
    with pytest.raises(PermissionDenied, match="phone-2"):
        auth.authenticate(bearer(f"{TOKEN}-2"), None, "").check_model("sha256:y")
    for metadata in ([], bearer("x" * 20), [("authorization", TOKEN)], bearer(TOKEN) * 2):
        with pytest.raises(Unauthenticated):
            auth.authenticate(metadata, None, "")
    # Without tokens, callers are told apart by certificate or address (per-client limit).
    open_auth = Authenticator([], require_token=False)
    assert open_auth.authenticate([], "phone-9", "ipv4:1.2.3.4:5").client == "tls:phone-9"
    assert open_auth.authenticate([], None, "ipv6:[::1]:5").client == "peer:::1"
    assert peer_host("ipv4:10.0.0.1:443") == "10.0.0.1"


@pytest.mark.parametrize(
    "text, words",
    [
        ("phone: short", ["phone", "at least 16"]),
        (f"'bad id!': {TOKEN}", ["device id"]),
        (f"a: {TOKEN}\nb: {TOKEN}", ["shares a token"]),
        ("[]", ["mapping"]),
        (f"a: {{token: {TOKEN}, role: admin}}", ["role"]),
    ],
)
def test_bad_token_files(text, words):
    import yaml

    with pytest.raises(ConfigError) as info:
        parse_tokens(yaml.safe_load(text), "tokens.yaml")
    for word in words:
        assert word in str(info.value)
    assert TOKEN not in str(info.value), "tokens never appear in messages"


def test_bad_token_env():
    with pytest.raises(ConfigError, match="device_id=token"):
        parse_tokens_env(TOKEN, "T")
    with pytest.raises(ConfigError, match="T is unset"):
        load_tokens(AuthConfig(tokens_env="T"), {})
    assert len(parse_tokens_env(f"a={TOKEN},\n b={TOKEN}x\n", "T")) == 2


def test_cli_refuses_to_expose_an_unauthenticated_decoder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "cloud", "serve", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "tandem cloud: error:" in result.stderr and "loopback" in result.stderr


def test_metrics_on_a_non_loopback_address_need_an_explicit_opt_in():
    """The metrics endpoint has no authentication; the exposure check once looked only at
    ``listen``."""
    with pytest.raises(ConfigError, match="metrics_listen 0.0.0.0:9464 is not a loopback"):
        parse_cloud_config({"metrics_listen": "0.0.0.0:9464"})
    config = parse_cloud_config({"metrics_listen": "0.0.0.0:9464", "metrics_public": True})
    assert config.metrics_public
    assert not parse_cloud_config({"metrics_listen": "127.0.0.1:9464"}).metrics_public
