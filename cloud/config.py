"""CloudConfig: every setting of the cloud decoder service, checked once when it is loaded.

``cloud.yaml`` is one mapping of sections; ``parse_cloud_config`` turns it into frozen
dataclasses (``tandem.config.build``: the field types say what each key takes, each
dataclass's ``__post_init__`` its bounds) and rejects unknown keys, wrong types and
out-of-range values with one ``ConfigError`` line naming the file, the key and the value.
After that the server trusts the object. Parsing is pure (no files are opened, no environment
is read): the files and the environment variable it names are read when the server starts
(``tandem.cloud.server``), so a config for another machine (a Kubernetes ConfigMap, say) can
still be validated here.

Every key is documented in ``docs/configuration.md``; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tandem.config import Address, bound, build, merged, require, shown
from tandem.errors import ConfigError
from tandem.runtime.options import SessionConfig
from tandem.yamlfile import read_yaml_mapping

DEFAULT_LISTEN = "127.0.0.1:50051"
MAX_PATH_CHARS = 4096


def parse_address(value: Any, where: str) -> Address:
    """``"host:port"`` or ``"[v6]:port"`` -> Address; ConfigError naming ``where`` otherwise."""
    try:
        return Address(value)
    except ConfigError as exc:
        raise ConfigError(f"{where} {exc}") from None


def _text(config: Any, *names: str, limit: int = MAX_PATH_CHARS) -> None:
    """Each named field is None or a non-empty string of at most ``limit`` characters."""
    for name in names:
        value = getattr(config, name)
        require(
            value is None or 0 < len(value) <= limit,
            f"{name} must be a non-empty string (at most {limit} characters), got {shown(value)}",
        )


_STREAM_HOLD_MAX_MS = 200
"""Default longest hold between two token messages (``stream_interval_max_ms``)."""


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
    stream_cpu_share: float = 0.02
    """Share of one core a model's Decode streams together may spend on token messages
    between their first and their last: with many streams the hold grows past
    ``stream_interval_ms`` (see ``tandem.cloud.pacing``; Handoff streams are never held
    longer); 0 keeps it at ``stream_interval_ms``."""
    stream_interval_max_ms: int | None = None
    """Longest hold between two token messages of a Decode stream however busy the replica
    is, so the app behind the edge agent sees progress at least this often; None: 200 ms (or
    ``stream_interval_ms``, if that is longer)."""

    def __post_init__(self) -> None:
        bound(self, "max_batch", "max_queue", "retry_after_ms", ge=1)
        bound(self, "stream_interval_ms", ge=0)
        bound(self, "stream_cpu_share", ge=0, le=1)
        if self.stream_interval_max_ms is not None:
            bound(self, "stream_interval_max_ms", ge=0)
            require(
                self.stream_interval_max_ms >= self.stream_interval_ms,
                f"stream_interval_max_ms ({self.stream_interval_max_ms}) must be at least "
                f"stream_interval_ms ({self.stream_interval_ms})",
            )

    @property
    def stream_hold_max_ms(self) -> int:
        """The longest hold in effect (``stream_interval_max_ms`` or its default)."""
        if self.stream_interval_max_ms is not None:
            return self.stream_interval_max_ms
        return max(_STREAM_HOLD_MAX_MS, self.stream_interval_ms)


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
    handoff_prefix_timeout_s: float = 2.0
    """A Handoff call must send its prefix this long after the replica acknowledged its hidden
    states (bounded by the call's deadline), or it is cancelled: a device answers the ack at
    once, so the wait is one round trip; one that never does holds its client's stream slot
    (not a batch slot) no longer than this."""

    def __post_init__(self) -> None:
        bound(self, "max_new_tokens", "deadline_margin_ms", ge=0)
        bound(self, "max_streams_per_client", ge=1)
        bound(self, "default_deadline_s", "first_message_timeout_s", gt=0)
        bound(self, "handoff_prefix_timeout_s", gt=0)
        bound(self, "max_waiting_calls", "max_health_calls", ge=1)


@dataclass(frozen=True)
class AuthConfig:
    """Bearer tokens, one per device; the token file format is in ``docs/configuration.md``
    ("Authentication and the loopback rule")."""

    tokens_file: str | None = None
    """YAML mapping device id -> token (or -> {token, models}); read when the server starts."""
    tokens_env: str | None = None
    """Name of an environment variable holding ``id=token`` entries separated by commas or
    newlines (for a Kubernetes Secret); read when the server starts. Combines with the file."""
    allow_plaintext_tokens: bool = False
    """Accept bearer tokens without TLS on a non-loopback address. Only for a network whose
    transport is encrypted by something else (a service mesh); a token sent in clear text is
    a token given away."""

    def __post_init__(self) -> None:
        _text(self, "tokens_file", "tokens_env")

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

    def __post_init__(self) -> None:
        _text(self, "cert_file", "key_file", "client_ca_file")

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

    def __post_init__(self) -> None:
        bound(self, "max_connection_age_s", "keepalive_min_interval_s", gt=0)
        bound(self, "max_concurrent_streams", ge=1)


@dataclass(frozen=True)
class CloudConfig:
    """The whole service: where to listen, what to serve, how to batch, who may call."""

    listen: Address = Address(DEFAULT_LISTEN)
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
    log_format: Literal["text", "json"] = "text"
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

    def __post_init__(self) -> None:
        _text(self, "replica_id", limit=128)
        for i, bundle in enumerate(self.bundles):
            require(
                0 < len(bundle) <= MAX_PATH_CHARS,
                f"bundles[{i}] must be a non-empty path, got {shown(bundle)}",
            )
        bound(self, "grace_period_s", ge=0)
        self._check_exposure()

    def _check_exposure(self) -> None:
        """Refuse configurations that would hand the decoder, or a token, to the network."""
        tls = self.tls
        require(
            (tls.cert_file is None) == (tls.key_file is None),
            "tls.cert_file and tls.key_file must be set together",
        )
        require(
            tls.client_ca_file is None or tls.enabled,
            "tls.client_ca_file needs tls.cert_file and tls.key_file",
        )
        metrics = self.metrics_listen
        require(
            metrics is None or Address(metrics).is_loopback or self.metrics_public,
            f"metrics_listen {metrics} is not a loopback address; the metrics endpoint has no "
            "authentication. Set metrics_public: true to expose it anyway, or listen on "
            "127.0.0.1",
        )
        if Address(self.listen).is_loopback:
            return
        require(
            self.authenticates,
            f"listen {self.listen} is not a loopback address and no authentication is "
            "configured; anyone who can reach it could use the decoder. Set auth.tokens_file "
            "or auth.tokens_env (or tls.client_ca_file for mTLS), or listen on 127.0.0.1",
        )
        require(
            not self.auth.enabled or tls.enabled or self.auth.allow_plaintext_tokens,
            f"bearer tokens on non-loopback {self.listen} without TLS would travel in clear "
            "text; set tls.cert_file and tls.key_file, or auth.allow_plaintext_tokens if a "
            "service mesh encrypts the transport",
        )

    @property
    def authenticates(self) -> bool:
        """Callers are identified: by bearer token, or by a client certificate (mTLS)."""
        return self.auth.enabled or self.tls.client_ca_file is not None


def load_cloud_config(path: str | Path | None = None, **overrides: Any) -> CloudConfig:
    """Read ``cloud.yaml`` (None: all defaults) and apply command-line ``overrides``.

    Overrides are raw values keyed like top-level keys (``listen="0.0.0.0:50051"``,
    ``bundles=["dir"]``); None means "not given". They are validated like the file.
    """
    data: dict[str, Any] = {}
    where = "cloud config"
    if path is not None:
        path = Path(path)
        data, where = read_yaml_mapping(path, "cloud config"), path.name
    return parse_cloud_config(merged(data, overrides), where)


def parse_cloud_config(data: dict[str, Any] | None, where: str = "cloud config") -> CloudConfig:
    """Validate a loaded mapping; one ConfigError naming ``where``, the key and the value."""
    return build(CloudConfig, data, where)
