"""CloudConfig: every setting of the cloud decoder service, checked once when it is loaded.

``cloud.yaml`` is one mapping of sections; ``parse_cloud_config`` turns it into frozen
dataclasses and rejects unknown keys, wrong types and out-of-range values with a
``ConfigError`` that names the file, the key and the value. After that the server trusts the
object. Parsing is pure (no files are opened, no environment is read): the files and the
environment variable it names are read when the server starts (``tandem.cloud.server``), so a
config for another machine (a Kubernetes ConfigMap, say) can still be validated here.

Every key is documented in ``README.md ("The cloud decoder service")``; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.errors import ConfigError
from tandem.runtime.options import SessionConfig
from tandem.yamlfile import read_yaml_mapping

DEFAULT_LISTEN = "127.0.0.1:50051"
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Address:
    """A HOST:PORT to bind; port 0 asks the OS for a free port (tests, benchmarks)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Only reachable from this machine: safe to serve without authentication."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name may resolve to anything

    def with_port(self, port: int) -> Address:
        return dataclasses.replace(self, port=port)


def parse_address(value: Any, where: str) -> Address:
    """``"host:port"`` or ``"[v6]:port"`` -> Address; ConfigError naming ``where`` otherwise."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a 'HOST:PORT' string, got {value!r}")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
        if ":" in host:
            raise ConfigError(f"{where}: write IPv6 addresses as '[addr]:PORT', got {value!r}")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where} must be 'HOST:PORT' with a port in [0, 65535], got {value!r}")
    return Address(host, int(port))


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits of each served model bundle."""

    max_batch: int = 32
    """Most sequences decoded together in one batched step. More raises throughput until the
    step is compute-bound; each row also holds its KV cache in memory."""
    max_queue: int = 64
    """Most requests waiting for a batch slot; one more is RESOURCE_EXHAUSTED at once, which
    is better for a client with a deadline than waiting behind a long queue."""
    retry_after_ms: int = 200
    """Retry hint sent with RESOURCE_EXHAUSTED (trailing metadata ``retry-after-ms``)."""
    stream_interval_ms: int = 20
    """Least time between two token messages of one stream; tokens decoded meanwhile go out
    together (20 ms: the edge agent passes pieces to apps as often). The first tokens and the
    end of a stream are never held. Why: each message costs the replica (and the client)
    Python and HTTP/2 work per stream per step, which with a full batch outweighs the batched
    step itself; 0 sends every step's tokens at once."""


@dataclass(frozen=True)
class LimitsConfig:
    """Per-request and per-client bounds."""

    max_new_tokens: int = 0
    """Cap on GenerationParams.max_new_tokens for every model; 0 means each model's own limit.
    ListModels reports the effective cap."""
    max_streams_per_client: int = 32
    """Concurrent Decode streams one client (device id, else TLS identity, else peer IP) may
    hold; one more is RESOURCE_EXHAUSTED. Stops one device from taking every batch slot."""
    default_deadline_s: float = 60.0
    """Deadline applied to a call that arrives without one: no work is ever unbounded."""
    deadline_margin_ms: float = 50.0
    """A stream ends with FINISH_REASON_DEADLINE this long (or two decoding steps, if longer)
    before the caller's deadline, so the final event and its tokens arrive in time."""
    first_message_timeout_s: float = 5.0
    """A call must deliver its request message this long after it arrives, or it is cancelled
    and its thread freed (health checks: at most 1 s). Calls that send headers and never a
    message once held every slot of a replica. Long enough for hidden states on a slow uplink
    (the edge gives up on a first token after 2 s by default)."""
    max_waiting_calls: int = 64
    """Calls accepted but still waiting for their request message, per lane (Decode, health,
    the rest); one more is RESOURCE_EXHAUSTED at once. Such calls never count against the
    running limits, so they cannot starve complete ones."""
    max_health_calls: int = 32
    """Health checks and Watch streams served at once, on threads Decode cannot take."""


@dataclass(frozen=True)
class AuthConfig:
    """Bearer tokens, one per device; see README.md ("The cloud decoder service") for the token file format."""

    tokens_file: str | None = None
    """YAML mapping device id -> token (or -> {token, models}); read when the server starts."""
    tokens_env: str | None = None
    """Name of an environment variable holding ``id=token`` entries separated by commas or
    newlines (for a Kubernetes Secret); read when the server starts. Combines with the file."""
    allow_plaintext_tokens: bool = False
    """Accept bearer tokens without TLS on a non-loopback address. Only for a network whose
    transport is encrypted by something else (a service mesh); a token sent in clear text is
    a token given away."""

    @property
    def enabled(self) -> bool:
        return self.tokens_file is not None or self.tokens_env is not None


@dataclass(frozen=True)
class TLSConfig:
    """Server certificate and, for mutual TLS, the CA that signs client certificates."""

    cert_file: str | None = None
    """PEM certificate chain of the server."""
    key_file: str | None = None
    """PEM private key of the server."""
    client_ca_file: str | None = None
    """PEM CA bundle; when set every client must present a certificate it signed (mTLS)."""

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class ServerConfig:
    """gRPC transport settings."""

    max_connection_age_s: float = 300.0
    """Connections are closed (gracefully, with GOAWAY) after this long, so clients balancing
    with ``round_robin`` re-resolve and spread onto replicas added since they connected."""
    keepalive_min_interval_s: float = 10.0
    """Shortest client keepalive ping interval tolerated; more frequent pings get the
    connection closed with ``too_many_pings``."""
    max_concurrent_streams: int = 128
    """HTTP/2 streams one connection may have open (``grpc.max_concurrent_streams``); a client
    asking for more waits on its side. Raise it behind a proxy that multiplexes many devices
    onto one connection."""


@dataclass(frozen=True)
class CloudConfig:
    """The whole service: where to listen, what to serve, how to batch, who may call."""

    listen: Address = field(default_factory=lambda: parse_address(DEFAULT_LISTEN, "listen"))
    """Address of the Decoder service (plus health and reflection)."""
    health_listen: Address | None = None
    """Extra plaintext address serving only grpc.health.v1: probes (Kubernetes, Docker) that
    cannot speak TLS or carry tokens use it; it serves no data."""
    metrics_listen: Address | None = None
    """Address of the Prometheus ``/metrics`` HTTP endpoint; None turns it off."""
    metrics_public: bool = False
    """Allow ``metrics_listen`` on a non-loopback address. The endpoint has no authentication
    and shows model names, traffic and error rates; say so explicitly (for a scraper on a
    private network) or keep it on 127.0.0.1."""
    replica_id: str | None = None
    """Name in DecodeFinal.replica_id and in logs; None means ``<hostname>-<pid>``."""
    bundles: tuple[str, ...] = ()
    """Model bundle directories or shipped bundle names; empty means the default model."""
    reflection: bool = True
    """Serve gRPC server reflection (grpcurl, grpcui)."""
    log_format: str = "text"
    """``text`` or ``json`` (one JSON object per line, for log collectors)."""
    grace_period_s: float = 20.0
    """On SIGTERM, in-flight streams get this long to finish; those still running then end
    with FINISH_REASON_CANCELLED (their tokens stay valid) and the process exits 0."""
    session: SessionConfig = field(default_factory=SessionConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    @property
    def authenticates(self) -> bool:
        """Callers are identified: by bearer token, or by a client certificate (mTLS)."""
        return self.auth.enabled or self.tls.client_ca_file is not None


# ---------------------------------------------------------------------------------------------
# Parsing.


def load_cloud_config(path: str | Path | None = None, **overrides: Any) -> CloudConfig:
    """Read ``cloud.yaml`` (None: all defaults) and apply command-line ``overrides``.

    Overrides are raw values keyed like top-level keys (``listen="0.0.0.0:50051"``,
    ``bundles=["dir"]``); None means "not given". They are validated like the file.
    """
    data: dict[str, Any] = {}
    where = "cloud config"
    if path is not None:
        path = Path(path)
        where = path.name
        data = read_yaml_mapping(path, "cloud config")
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    return parse_cloud_config(data, where)


def parse_cloud_config(data: dict[str, Any] | None, where: str = "cloud config") -> CloudConfig:
    """Validate a loaded mapping; one ConfigError naming ``where``, the key and the value."""
    data = dict(data or {})
    _reject_unknown(data, CloudConfig, where, "")
    values: dict[str, Any] = {}
    if "listen" in data:
        values["listen"] = parse_address(data["listen"], f"{where}: listen")
    for key in ("health_listen", "metrics_listen"):
        if data.get(key) is not None:
            values[key] = parse_address(data[key], f"{where}: {key}")
    if data.get("replica_id") is not None:
        values["replica_id"] = _string(data["replica_id"], f"{where}: replica_id", limit=128)
    if data.get("bundles") is not None:
        bundles = data["bundles"]
        if isinstance(bundles, str) or not isinstance(bundles, list | tuple):
            raise ConfigError(f"{where}: bundles must be a list of paths, got {bundles!r}")
        values["bundles"] = tuple(
            _string(b, f"{where}: bundles[{i}]") for i, b in enumerate(bundles)
        )
    if "reflection" in data:
        values["reflection"] = _bool(data["reflection"], f"{where}: reflection")
    if "metrics_public" in data:
        values["metrics_public"] = _bool(data["metrics_public"], f"{where}: metrics_public")
    if "log_format" in data:
        fmt = data["log_format"]
        if fmt not in LOG_FORMATS:
            raise ConfigError(
                f"{where}: log_format must be one of {list(LOG_FORMATS)}, got {fmt!r}"
            )
        values["log_format"] = fmt
    if "grace_period_s" in data:
        values["grace_period_s"] = _number(data["grace_period_s"], f"{where}: grace_period_s", 0)
    if "session" in data:
        section = data["session"]
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{where}: session must be a mapping, got {section!r}")
        try:
            values["session"] = SessionConfig.from_dict(section, where=f"{where}: session")
        except ConfigError as exc:
            message = str(exc)
            if not message.startswith(where):  # the runtime's own checks omit the file
                raise ConfigError(f"{where}: session.{message}") from exc
            raise
    values["scheduler"] = _scheduler(data.get("scheduler"), where)
    values["limits"] = _limits(data.get("limits"), where)
    values["auth"] = _auth(data.get("auth"), where)
    values["tls"] = _tls(data.get("tls"), where)
    values["server"] = _server(data.get("server"), where)
    config = CloudConfig(**values)
    _check_exposure(config, where)
    return config


def _check_exposure(config: CloudConfig, where: str) -> None:
    """Refuse configurations that would hand the decoder, or a token, to the network."""
    tls = config.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(f"{where}: tls.cert_file and tls.key_file must be set together")
    if tls.client_ca_file is not None and not tls.enabled:
        raise ConfigError(f"{where}: tls.client_ca_file needs tls.cert_file and tls.key_file")
    metrics = config.metrics_listen
    if metrics is not None and not metrics.is_loopback and not config.metrics_public:
        raise ConfigError(
            f"{where}: metrics_listen {metrics} is not a loopback address; the metrics endpoint "
            "has no authentication. Set metrics_public: true to expose it anyway, or listen on "
            "127.0.0.1"
        )
    if config.listen.is_loopback:
        return
    if not config.authenticates:
        raise ConfigError(
            f"{where}: listen {config.listen} is not a loopback address and no authentication "
            "is configured; anyone who can reach it could use the decoder. Set auth.tokens_file "
            "or auth.tokens_env (or tls.client_ca_file for mTLS), or listen on 127.0.0.1"
        )
    if config.auth.enabled and not tls.enabled and not config.auth.allow_plaintext_tokens:
        raise ConfigError(
            f"{where}: bearer tokens on non-loopback {config.listen} without TLS would travel "
            "in clear text; set tls.cert_file and tls.key_file, or auth.allow_plaintext_tokens "
            "if a service mesh encrypts the transport"
        )


def _scheduler(data: Any, where: str) -> SchedulerConfig:
    data = _mapping(data, SchedulerConfig, where, "scheduler")
    return SchedulerConfig(
        **{
            key: _integer(
                value, f"{where}: scheduler.{key}", 0 if key == "stream_interval_ms" else 1
            )
            for key, value in data.items()
        }
    )


def _limits(data: Any, where: str) -> LimitsConfig:
    data = _mapping(data, LimitsConfig, where, "limits")
    values: dict[str, Any] = {}
    if "max_new_tokens" in data:
        values["max_new_tokens"] = _integer(
            data["max_new_tokens"], f"{where}: limits.max_new_tokens", 0
        )
    if "max_streams_per_client" in data:
        values["max_streams_per_client"] = _integer(
            data["max_streams_per_client"], f"{where}: limits.max_streams_per_client", 1
        )
    if "default_deadline_s" in data:
        values["default_deadline_s"] = _number(
            data["default_deadline_s"], f"{where}: limits.default_deadline_s", 0, exclusive=True
        )
    if "deadline_margin_ms" in data:
        values["deadline_margin_ms"] = _number(
            data["deadline_margin_ms"], f"{where}: limits.deadline_margin_ms", 0
        )
    if "first_message_timeout_s" in data:
        values["first_message_timeout_s"] = _number(
            data["first_message_timeout_s"],
            f"{where}: limits.first_message_timeout_s",
            0,
            exclusive=True,
        )
    for key in ("max_waiting_calls", "max_health_calls"):
        if key in data:
            values[key] = _integer(data[key], f"{where}: limits.{key}", 1)
    return LimitsConfig(**values)


def _auth(data: Any, where: str) -> AuthConfig:
    data = _mapping(data, AuthConfig, where, "auth")
    values: dict[str, Any] = {}
    for key in ("tokens_file", "tokens_env"):
        if data.get(key) is not None:
            values[key] = _string(data[key], f"{where}: auth.{key}")
    if "allow_plaintext_tokens" in data:
        values["allow_plaintext_tokens"] = _bool(
            data["allow_plaintext_tokens"], f"{where}: auth.allow_plaintext_tokens"
        )
    return AuthConfig(**values)


def _tls(data: Any, where: str) -> TLSConfig:
    data = _mapping(data, TLSConfig, where, "tls")
    return TLSConfig(
        **{
            key: _string(value, f"{where}: tls.{key}")
            for key, value in data.items()
            if value is not None
        }
    )


def _server(data: Any, where: str) -> ServerConfig:
    data = _mapping(data, ServerConfig, where, "server")
    return ServerConfig(
        **{
            key: _integer(value, f"{where}: server.{key}", 1)
            if key == "max_concurrent_streams"
            else _number(value, f"{where}: server.{key}", 0, exclusive=True)
            for key, value in data.items()
        }
    )


def _mapping(data: Any, cls: type, where: str, section: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {section} must be a mapping, got {data!r}")
    _reject_unknown(data, cls, where, f"{section}.")
    return data


def _reject_unknown(data: dict[str, Any], cls: type, where: str, prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ConfigError(f"{where}: unknown key(s) {names}; known: {sorted(known)}")


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, where: str, minimum: float, exclusive: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok:
        ok = value > minimum if exclusive else value >= minimum
    if not ok:
        bound = f"> {minimum}" if exclusive else f">= {minimum}"
        raise ConfigError(f"{where} must be a number {bound}, got {value!r}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    return value


def _string(value: Any, where: str, limit: int = 4096) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ConfigError(
            f"{where} must be a non-empty string (at most {limit} characters), got {value!r}"
        )
    return value
