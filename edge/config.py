"""Edge agent configuration (``edge.yaml``): frozen dataclasses, validated once when loaded.

``tandem.config.build`` turns the file into ``EdgeConfig``: the field types say what each key
takes, each dataclass's ``__post_init__`` checks its bounds, unknown keys are errors — a misspelt
``deadline_s`` must not silently fall back to the default on a fleet of devices. Every key is
documented in ``docs/configuration.md``; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

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
from tandem.errors import ConfigError
from tandem.policy import PolicyConfig
from tandem.policy.energy import RADIOS
from tandem.runtime.codec import parse_codec_spec
from tandem.runtime.options import SessionConfig
from tandem.yamlfile import read_yaml

FORCED_ROUTES = ("local", "cloud", "handoff")
"""Values of ``cloud.force_route``: the names of ``tandem.policy.Route``."""


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


@dataclass(frozen=True)
class EdgeSessionConfig(SessionConfig):
    """``session`` of ``edge.yaml``: ONNX Runtime settings, with the agent's own thread default."""

    intra_op_threads: int = field(default_factory=default_intra_op_threads)
    """Threads inside one operator; default: every usable core but one (at least 1)."""


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 3
    """Consecutive failed cloud calls that open the circuit breaker."""
    reset_timeout_s: float = 5.0
    """Seconds the breaker stays open before one probe request is let through."""

    def __post_init__(self) -> None:
        bound(self, "failure_threshold", ge=1)
        bound(self, "reset_timeout_s", gt=0)


@dataclass(frozen=True)
class CloudSettings:
    """How the agent reaches the cloud decoder service."""

    enabled: bool = True
    """False: decode everything locally (no channel is opened)."""
    addresses: tuple[Address, ...] = field(
        default=(Address("127.0.0.1:50051"),), metadata=ONE_OR_MANY
    )
    """host:port of each replica; several are balanced round-robin on one channel. A single
    address may be written without the list."""
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
    handoff_stall_s: float = 0.5
    """A HANDOFF drops the cloud when its stream makes no progress this long (its first token
    may take the acknowledgement's time on top); local decoding then carries on, or resumes
    at once from every token known if it had stopped."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest DecodeRequest the agent uploads: gRPC's default receive limit, which proxies
    and peers without configuration enforce (deploy/nginx's client_max_body_size too). A
    request whose hidden states cannot fit is decoded locally (fallback ``upload_too_large``,
    logged with the codecs that would fit); raise it when every hop accepts more."""
    force_route: str | None = None
    """Route every request this way (``local``, ``cloud`` or ``handoff``) instead of what the
    policy picks, except where a rule forces LOCAL (local_only, offline, open breaker, byte
    budget): for tests, chaos runs and demonstrations. None: the policy decides."""

    def __post_init__(self) -> None:
        bound(self, "deadline_s", "first_token_timeout_s", "keepalive_s", "backoff_max_s", gt=0)
        bound(self, "handoff_stall_s", gt=0)
        if self.force_route is not None:
            one_of(self, "force_route", FORCED_ROUTES)
        bound(self, "backoff_initial_s", "ping_interval_s", ge=0)
        bound(self, "max_attempts", ge=1, le=10)
        bound(self, "max_message_bytes", ge=1024)
        require(bool(self.addresses), "addresses must be a non-empty list of host:port")
        for i, address in enumerate(self.addresses):
            require(Address(address).port > 0, f"addresses[{i}] needs a port, got {shown(address)}")
        if self.ping_timeout_s is not None:
            bound(self, "ping_timeout_s", gt=0)
        require(
            self.ping_interval_s == 0 or self.effective_ping_timeout_s <= self.ping_interval_s,
            f"ping_timeout_s ({self.ping_timeout_s}) must not exceed ping_interval_s "
            f"({self.ping_interval_s}): pings leave on a fixed beat",
        )
        try:
            parse_codec_spec(self.codec)
        except Exception as exc:
            raise ConfigError(f"codec: {exc}") from None
        require(
            (self.cert_file is None) == (self.key_file is None),
            "cert_file and key_file go together",
        )
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            require(path is None or Path(path).is_file(), f"{name}: no such file {shown(path)}")
        require(self.token is None or self.token_env is None, "set token or token_env, not both")

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
    socket_mode: FileMode = FileMode(0o600)
    """Permissions of the socket file: owner-only unless apps run as another user."""
    tcp: Address | None = None
    """Optional loopback TCP address (host:port) for the local API, e.g. 127.0.0.1:50061."""
    max_text_chars: int = 4096
    """Longest input text accepted on the local API."""
    max_audio_s: float = 120.0
    """Longest audio accepted on the local API (speech models), read from the WAV header
    before any sample is decoded; longer is INVALID_ARGUMENT. Each 30 s window costs one
    encoder run and one decoding run."""
    max_audio_bytes: int = 32 * 1024 * 1024
    """Largest WAV file accepted on the local API (speech models): bounds what one request
    holds in memory (120 s of 48 kHz stereo float32 is 46 MB; of 16 kHz mono PCM16, 3.8 MB)."""
    piece_interval_ms: float = 20.0
    """Streamed text pieces are coalesced to at most one message per interval (0: per token)."""
    max_concurrent: int = 8
    """Requests served at once on the local API; one more is RESOURCE_EXHAUSTED at once
    (edge.proto), so an app learns the agent is busy instead of waiting in an unbounded line."""
    session: EdgeSessionConfig = field(default_factory=EdgeSessionConfig)
    """ONNX Runtime settings; ``intra_op_threads`` defaults to all usable cores but one."""
    cloud: CloudSettings = field(default_factory=CloudSettings)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    device_profile: str | None = None
    """Profile YAML of this device (default: shipped device profile)."""
    cloud_profile: str | None = None
    """Profile YAML of the cloud (default: shipped cloud profile)."""
    device_speed_factor: float = 1.0
    """Multiplies the device profile's times (the shipped profile was measured on a server)."""
    network_type: str = "lte"
    """The radio this device reaches the cloud over: ``lte``, ``3g``, ``5g`` or ``wifi``
    (``tandem.policy.energy.RADIOS``). It prices the radio's energy — its promotion, active
    and tail power — for the energy objectives; no operating system tells a daemon portably
    which radio carries its traffic, so it is stated per device."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on 127.0.0.1:PORT (None or 0: off)."""
    drain_s: float = 10.0
    """On SIGTERM, how long in-flight requests may take to finish."""

    def __post_init__(self) -> None:
        if self.tcp is not None:
            tcp = Address(self.tcp)
            require(
                tcp.is_loopback and tcp.port > 0,
                f"tcp must be a loopback address (the local API has no auth), got {shown(self.tcp)}",
            )
        require(
            bool(self.socket) or self.tcp is not None,
            "socket: the local API needs a socket path or a tcp address",
        )
        bound(self, "socket_mode", ge=0, le=0o777)
        bound(self, "max_text_chars", "max_concurrent", "max_audio_bytes", ge=1)
        bound(self, "max_audio_s", gt=0)
        bound(self, "device_speed_factor", gt=0)
        one_of(self, "network_type", sorted(RADIOS))
        bound(self, "drain_s", "piece_interval_ms", ge=0)
        if self.metrics_port is not None:
            bound(self, "metrics_port", ge=0, le=65535)


def validate(config: EdgeConfig, where: str = "edge.yaml") -> EdgeConfig:
    """``config`` itself: every check runs when an ``EdgeConfig`` is built (``__post_init__``),
    also by ``dataclasses.replace``. Kept for callers written before that."""
    return config


def edge_config_from_dict(data: Any, where: str = "edge.yaml") -> EdgeConfig:
    """The ``EdgeConfig`` a loaded ``edge.yaml`` mapping describes; ``where`` names the file."""
    return build(EdgeConfig, data, where)


def load_edge_config(path: str | Path | None, **overrides: Any) -> EdgeConfig:
    """Read and validate ``edge.yaml``; no path gives the defaults.

    ``overrides`` are raw values laid over the file, section by section
    (``tcp="127.0.0.1:50061"``, ``cloud={"addresses": [...]}``); None means "not given".
    """
    data: Any = {}
    where = "edge.yaml"
    if path is not None:
        path = Path(path)
        data, where = read_yaml(path, "edge config"), path.name
    if overrides and (data is None or isinstance(data, dict)):
        data = merged(data, overrides)
    return build(EdgeConfig, data, where)
