"""Edge agent configuration (``edge.yaml``): frozen dataclasses, validated once when loaded.

Every key is documented in the README ("Edge agent configuration"). Unknown keys are errors —
a misspelt ``deadline_s`` must not silently fall back to the default on a fleet of devices.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tandem.errors import ConfigError
from tandem.policy import PolicyConfig
from tandem.runtime.codec import parse_codec_spec
from tandem.runtime.options import SessionConfig
from tandem.yamlfile import read_yaml


def default_socket_path() -> str:
    """A per-user socket path: $XDG_RUNTIME_DIR if set (owner-only by spec), else the temp dir."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return str(Path(runtime_dir) / "tandem" / "edge.sock")
    return str(Path("/tmp") / f"tandem-{os.getuid()}" / "edge.sock")


def default_intra_op_threads() -> int:
    """The agent's ONNX Runtime threads per operator: every usable core but one (at least 1).

    Why not one per core, as ONNX Runtime would pick: the agent shares the device with the app
    that reads its stream and with its own gRPC I/O, and a decoder pool on every core spins
    (or sleeps and wakes) against both. On a 2-core machine, an app asking for 47 tokens
    waited 22-24 ms (median) with a 2-thread pool and 19 ms with one thread; the agent's own
    time fell too (18-20 to 16 ms), and the spread with it.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or usable
    return max(1, min(usable, physical) - 1)


def edge_session_config(data: Any = None, where: str = "session") -> SessionConfig:
    """``session`` of ``edge.yaml``: as written, ``intra_op_threads`` defaulting to the agent's."""
    if data is None:
        data = {}
    if isinstance(data, dict) and "intra_op_threads" not in data:
        data = {**data, "intra_op_threads": default_intra_op_threads()}
    return SessionConfig.from_dict(data, where)


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 3
    """Consecutive failed cloud calls that open the circuit breaker."""
    reset_timeout_s: float = 5.0
    """Seconds the breaker stays open before one probe request is let through."""


@dataclass(frozen=True)
class CloudSettings:
    """How the agent reaches the cloud decoder service."""

    enabled: bool = True
    """False: decode everything locally (no channel is opened)."""
    addresses: tuple[str, ...] = ("127.0.0.1:50051",)
    """host:port of each replica; several are balanced round-robin on one channel."""
    deadline_s: float = 10.0
    """Upper bound on one cloud call, retries included; the policy's prediction tightens it."""
    first_token_timeout_s: float = 2.0
    """Without a hedge, give up on a call that has not streamed a token by then."""
    max_attempts: int = 3
    """Attempts per request, counting the first; retries happen only before the first token."""
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 0.5
    keepalive_s: float = 20.0
    """HTTP/2 keepalive ping interval: finds dead connections on idle cellular links."""
    codec: str = "int8+zstd"
    """Hidden-state codec on the wire: fp32, fp16, int8, each optionally +zstd or +gzip. The
    default is the smallest that meets its bar in bench/codec.py (int8+zstd: 0.22x fp32 bytes,
    100 % of 1,000 held-out outputs identical to fp32 on the default model)."""
    token: str | None = None
    """Bearer token sent to the cloud; prefer token_env so the secret stays out of the file."""
    token_env: str | None = None
    """Name of an environment variable holding the bearer token."""
    tls: bool = False
    """Use TLS (implied by ca_file)."""
    ca_file: str | None = None
    """PEM bundle of the CA that signed the cloud's certificate (system roots if unset)."""
    cert_file: str | None = None
    """Client certificate for mutual TLS (with key_file)."""
    key_file: str | None = None
    ping_interval_s: float = 2.0
    """How often the RTT probe pings the cloud (grpc.health.v1 Check); 0 disables it."""
    ping_timeout_s: float | None = None
    """A ping unanswered this long counts as lost (an outage sign); at most ping_interval_s,
    so pings leave on a fixed beat and never overlap (the simulator's probes, likewise).
    None: 1 s or ping_interval_s, whichever is shorter."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    @property
    def effective_ping_timeout_s(self) -> float:
        """``ping_timeout_s``, or its default: 1 s or ``ping_interval_s``, if shorter."""
        if self.ping_timeout_s is not None:
            return self.ping_timeout_s
        return min(1.0, self.ping_interval_s) if self.ping_interval_s > 0 else 1.0

    def bearer_token(self) -> str | None:
        if self.token_env:
            value = os.environ.get(self.token_env)
            if not value:
                raise ConfigError(
                    f"cloud.token_env: environment variable {self.token_env} is unset"
                )
            return value
        return self.token


@dataclass(frozen=True)
class EdgeConfig:
    """Everything ``tandem edge run`` needs."""

    bundle: str | None = None
    """Model bundle directory or shipped model name (default: the shipped default model)."""
    socket: str = field(default_factory=default_socket_path)
    """Unix domain socket of the local API; empty string disables it."""
    socket_mode: int = 0o600
    """Permissions of the socket file: owner-only unless apps run as another user."""
    tcp: str | None = None
    """Optional loopback TCP address (host:port) for the local API, e.g. 127.0.0.1:50061."""
    max_text_chars: int = 4096
    """Longest input text accepted on the local API."""
    piece_interval_ms: float = 20.0
    """Streamed text pieces are coalesced to at most one message per interval (0: per token)."""
    max_concurrent: int = 8
    """Requests served at once on the local API; one more is RESOURCE_EXHAUSTED at once
    (edge.proto), so an app learns the agent is busy instead of waiting in an unbounded line."""
    session: SessionConfig = field(default_factory=edge_session_config)
    """ONNX Runtime settings; ``intra_op_threads`` defaults to all usable cores but one."""
    cloud: CloudSettings = field(default_factory=CloudSettings)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    device_profile: str | None = None
    """Profile YAML of this device (default: shipped device profile)."""
    cloud_profile: str | None = None
    """Profile YAML of the cloud (default: shipped cloud profile)."""
    device_speed_factor: float = 1.0
    """Multiplies the device profile's times (the shipped profile was measured on a server)."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on 127.0.0.1:PORT (None: off)."""
    drain_s: float = 10.0
    """On SIGTERM, how long in-flight requests may take to finish."""


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        if name == "socket_mode" and isinstance(value, str):
            try:  # YAML 1.1 reads 0o600 as a string; accept the spelling users write
                value = int(value, 8)
            except ValueError as exc:
                raise ConfigError(f"{where}.socket_mode must be octal like 0o600") from exc
        if name == "addresses":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{where}.addresses must be a non-empty list of host:port")
            value = tuple(str(v) for v in value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _positive(where: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where} must be a number {bound}, got {value!r}")


def _check_address(where: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {address!r} is not host:port")


def validate(config: EdgeConfig, where: str = "edge.yaml") -> EdgeConfig:
    cloud = config.cloud
    for name in ("deadline_s", "first_token_timeout_s", "keepalive_s", "backoff_max_s"):
        _positive(f"{where}: cloud.{name}", getattr(cloud, name))
    _positive(f"{where}: cloud.backoff_initial_s", cloud.backoff_initial_s, allow_zero=True)
    _positive(f"{where}: cloud.ping_interval_s", cloud.ping_interval_s, allow_zero=True)
    if cloud.ping_timeout_s is not None:
        _positive(f"{where}: cloud.ping_timeout_s", cloud.ping_timeout_s)
    if cloud.ping_interval_s > 0 and cloud.effective_ping_timeout_s > cloud.ping_interval_s:
        raise ConfigError(
            f"{where}: cloud.ping_timeout_s ({cloud.ping_timeout_s}) must not exceed "
            f"cloud.ping_interval_s ({cloud.ping_interval_s}): pings leave on a fixed beat"
        )
    if not isinstance(cloud.max_attempts, int) or not 1 <= cloud.max_attempts <= 10:
        raise ConfigError(
            f"{where}: cloud.max_attempts must be in [1, 10], got {cloud.max_attempts!r}"
        )
    for address in cloud.addresses:
        _check_address(f"{where}: cloud.addresses", address)
    try:
        parse_codec_spec(cloud.codec)
    except Exception as exc:
        raise ConfigError(f"{where}: cloud.codec: {exc}") from exc
    if (cloud.cert_file is None) != (cloud.key_file is None):
        raise ConfigError(f"{where}: cloud.cert_file and cloud.key_file go together")
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(cloud, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{where}: cloud.{name}: no such file {path}")
    if cloud.token is not None and cloud.token_env is not None:
        raise ConfigError(f"{where}: set cloud.token or cloud.token_env, not both")
    if not isinstance(cloud.breaker.failure_threshold, int) or cloud.breaker.failure_threshold < 1:
        raise ConfigError(f"{where}: cloud.breaker.failure_threshold must be an integer >= 1")
    _positive(f"{where}: cloud.breaker.reset_timeout_s", cloud.breaker.reset_timeout_s)
    if config.tcp is not None:
        _check_address(f"{where}: tcp", config.tcp)
        host = config.tcp.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost", "[::1]", "::1"):
            raise ConfigError(
                f"{where}: tcp must be a loopback address (the local API has no auth), got {host}"
            )
    if not config.socket and config.tcp is None:
        raise ConfigError(f"{where}: the local API needs a socket path or a tcp address")
    if not isinstance(config.socket_mode, int) or not 0 <= config.socket_mode <= 0o777:
        raise ConfigError(f"{where}: socket_mode must be a permission number like 0o600")
    for name in ("max_text_chars", "max_concurrent"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {name} must be an integer >= 1, got {value!r}")
    _positive(f"{where}: device_speed_factor", config.device_speed_factor)
    _positive(f"{where}: drain_s", config.drain_s, allow_zero=True)
    _positive(f"{where}: piece_interval_ms", config.piece_interval_ms, allow_zero=True)
    return config


def edge_config_from_dict(data: Any, where: str = "edge.yaml") -> EdgeConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    data = dict(data)
    nested: dict[str, Any] = {}
    if "session" in data:
        nested["session"] = edge_session_config(data.pop("session"), f"{where}: session")
    if "policy" in data:
        nested["policy"] = PolicyConfig.from_dict(data.pop("policy"), f"{where}: policy")
    if "cloud" in data:
        cloud = data.pop("cloud")
        cloud = dict(cloud) if isinstance(cloud, dict) else cloud
        breaker = None
        if isinstance(cloud, dict) and "breaker" in cloud:
            breaker = _build(BreakerSettings, cloud.pop("breaker"), f"{where}: cloud.breaker")
        settings = _build(CloudSettings, cloud, f"{where}: cloud")
        if breaker is not None:
            settings = dataclasses.replace(settings, breaker=breaker)
        nested["cloud"] = settings
    config = _build(EdgeConfig, data, where)
    return validate(dataclasses.replace(config, **nested), where)


def load_edge_config(path: str | Path | None) -> EdgeConfig:
    """Read and validate ``edge.yaml``; no path gives the defaults."""
    if path is None:
        return validate(EdgeConfig())
    path = Path(path)
    return edge_config_from_dict(read_yaml(path, "edge config"), where=path.name)
