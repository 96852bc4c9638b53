"""PolicyConfig: every tunable of routing, checked once when it is built.

Three frozen dataclasses — ``PolicyConfig`` holds an ``EstimatorConfig`` and a
``LengthConfig`` — so the edge agent and the simulator load one mapping (a YAML section) with
``PolicyConfig.from_dict`` and then trust the object. Unknown keys are rejected: a typo in a
margin must fail at start, not silently fall back to a default.

Nothing here is tuned per network trace; every default is a general mechanism (a quantile, a
margin, a prior) whose reason is given on the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tandem.errors import ConfigError

POLICIES: tuple[str, ...] = ("always_local", "always_cloud", "threshold", "cost_model")
"""Routing policies ``decide`` implements (the simulator's ``oracle`` is not one: it needs the
future)."""

CODECS: dict[str, tuple[int, int]] = {
    "fp32": (4, 0),
    "fp16": (2, 0),
    "int8": (1, 4),
}
"""codec -> (bytes per hidden element, extra bytes per source token). int8 carries one float32
scale per row (token), as ``runtime/codec.py`` encodes it."""


@dataclass(frozen=True)
class EstimatorConfig:
    """How network samples become estimates (see ``policy.estimators``)."""

    prior_rtt_ms: float = 100.0
    """RTT assumed while no RTT sample is fresh: a cellular round trip, on the slow side."""
    prior_uplink_bps: float = 1_000_000.0
    """Uplink assumed before any upload (1 Mbit/s, a modest cellular uplink). Unknown bandwidth
    is not treated as zero: the hedge bounds what a wrong guess costs, and the next upload
    replaces the guess with a measurement."""
    prior_weight: float = 1.0
    """The prior counts as this many fresh upload samples in the throughput quantiles."""
    halflife_s: float = 30.0
    """An upload sample's weight halves every ``halflife_s``: old evidence fades into the prior.
    This is what makes a policy that stopped uploading (because the link looked bad) try again
    after a while instead of trusting a stale measurement forever."""
    window_s: float = 300.0
    """Samples older than this are dropped altogether."""
    max_samples: int = 32
    """Window length in samples; quantiles over 32 samples ignore a few freak ones."""
    ewma_alpha: float = 0.35
    """Weight of the newest sample in the EWMA (log domain for throughput). The EWMA is what
    notices a drop within one or two samples, before the windowed quantile does."""
    revert_s: float = 5.0
    """Time constant with which the throughput EWMA returns to the window's median when no new
    upload comes: cellular dips mostly last seconds, and a policy that stopped uploading
    because of one would otherwise never see the link recover."""
    low_quantile: float = 0.35
    """Pessimistic throughput = min(this quantile of the window, EWMA)."""
    high_quantile: float = 0.9
    """Pessimistic RTT / time-to-first-token = max(this quantile of the window, EWMA)."""
    loss_alpha: float = 0.1
    """EWMA weight of each call/probe outcome in the loss rate (memory of ~10 outcomes)."""
    outage_failures: int = 2
    """Consecutive failed calls/probes that declare an outage; one success ends it."""
    overdue_factor: float = 3.0
    """An outstanding probe older than this many pessimistic RTTs (and ``overdue_min_ms``)
    declares an outage until it returns: a stalled link is noticed within a few hundred
    milliseconds of the next probe, without waiting for the probe's timeout."""
    overdue_min_ms: float = 300.0

    def __post_init__(self) -> None:
        _check(self.prior_rtt_ms >= 0, "estimators.prior_rtt_ms must be >= 0", self.prior_rtt_ms)
        _check(
            self.prior_uplink_bps > 0,
            "estimators.prior_uplink_bps must be > 0",
            self.prior_uplink_bps,
        )
        _check(self.prior_weight > 0, "estimators.prior_weight must be > 0", self.prior_weight)
        _check(self.halflife_s > 0, "estimators.halflife_s must be > 0", self.halflife_s)
        _check(self.window_s > 0, "estimators.window_s must be > 0", self.window_s)
        _check(self.max_samples >= 1, "estimators.max_samples must be >= 1", self.max_samples)
        _check(0 < self.ewma_alpha <= 1, "estimators.ewma_alpha must be in (0, 1]", self.ewma_alpha)
        _check(self.revert_s > 0, "estimators.revert_s must be > 0", self.revert_s)
        _check(
            0 <= self.low_quantile <= 0.5,
            "estimators.low_quantile must be in [0, 0.5]",
            self.low_quantile,
        )
        _check(
            0.5 <= self.high_quantile <= 1,
            "estimators.high_quantile must be in [0.5, 1]",
            self.high_quantile,
        )
        _check(0 < self.loss_alpha <= 1, "estimators.loss_alpha must be in (0, 1]", self.loss_alpha)
        _check(
            self.overdue_factor > 0, "estimators.overdue_factor must be > 0", self.overdue_factor
        )
        _check(
            self.overdue_min_ms >= 0, "estimators.overdue_min_ms must be >= 0", self.overdue_min_ms
        )
        _check(
            self.outage_failures >= 1,
            "estimators.outage_failures must be >= 1",
            self.outage_failures,
        )


@dataclass(frozen=True)
class LengthConfig:
    """The online output-length predictor (see ``policy.length``)."""

    prior_intercept: float = 4.0
    """Decoder steps predicted for an empty source before anything was learned."""
    prior_slope: float = 1.0
    """Decoder steps per source token before anything was learned. About right for
    translation-like tasks, where output and input lengths are of the same order."""
    prior_weight: float = 4.0
    """Pseudo-requests the prior counts as; after a few real ones the data dominate."""
    forget: float = 0.998
    """Per-request decay of old evidence (memory of ~500 requests), so a drifting workload is
    followed."""
    min_tokens: float = 1.0
    max_tokens: float = 1024.0

    def __post_init__(self) -> None:
        _check(
            self.prior_intercept >= 0, "length.prior_intercept must be >= 0", self.prior_intercept
        )
        _check(self.prior_slope >= 0, "length.prior_slope must be >= 0", self.prior_slope)
        _check(self.prior_weight > 0, "length.prior_weight must be > 0", self.prior_weight)
        _check(0 < self.forget <= 1, "length.forget must be in (0, 1]", self.forget)
        _check(
            0 < self.min_tokens <= self.max_tokens,
            "length.min_tokens must be in (0, max_tokens]",
            self.min_tokens,
        )


@dataclass(frozen=True)
class PolicyConfig:
    """Which policy routes requests and the knobs of each."""

    policy: str = "cost_model"
    """One of ``POLICIES``."""
    codec: str = "int8"
    """Hidden-state codec used for uploads: fp32, fp16 or int8 (sets the payload size)."""
    payload_overhead_bytes: int = 160
    """Bytes of a Decode request besides the hidden states: fingerprint, ids, generation
    parameters, gRPC/HTTP2 framing."""
    token_bytes: int = 40
    """Downlink bytes per streamed token (a small protobuf message in an HTTP/2 DATA frame)."""
    max_cpu_load: float = 0.9
    """Load at which local decoding is taken to have only 1 - max_cpu_load of the CPU left."""
    hysteresis: float = 0.05
    """Relative margin the other route must win by to switch from the last cost-based route;
    keeps estimates that hover around the break-even point from flapping."""
    length_margin_sd: float = 0.5
    """Routes are priced for predicted_tokens + this many standard deviations of the length
    prediction: the pessimistic length, as the uplink is priced at a pessimistic quantile."""
    hedge: bool = True
    """``cost_model`` gives CLOUD decisions a hedge deadline."""
    hedge_factor: float = 1.0
    """Hedge deadline = hedge_factor x pessimistic time to first token + hedge_slack_ms."""
    hedge_slack_ms: float = 20.0
    call_deadline_ms: float = 2000.0
    """Whole-call deadline of the cloud client; prices a failed CLOUD attempt without hedge."""
    threshold_uplink_bps: float = 500_000.0
    """``threshold``: CLOUD needs at least this typical uplink ..."""
    threshold_src_len: int = 16
    """... and at least this many source tokens (longer inputs, longer outputs)."""
    estimators: EstimatorConfig = field(default_factory=EstimatorConfig)
    length: LengthConfig = field(default_factory=LengthConfig)

    def __post_init__(self) -> None:
        _check(self.policy in POLICIES, f"policy must be one of {list(POLICIES)}", self.policy)
        _check(self.codec in CODECS, f"codec must be one of {sorted(CODECS)}", self.codec)
        _check(
            self.payload_overhead_bytes >= 0,
            "payload_overhead_bytes must be >= 0",
            self.payload_overhead_bytes,
        )
        _check(self.token_bytes >= 0, "token_bytes must be >= 0", self.token_bytes)
        _check(0 <= self.max_cpu_load < 1, "max_cpu_load must be in [0, 1)", self.max_cpu_load)
        _check(0 <= self.hysteresis < 1, "hysteresis must be in [0, 1)", self.hysteresis)
        _check(self.length_margin_sd >= 0, "length_margin_sd must be >= 0", self.length_margin_sd)
        _check(self.hedge_factor >= 1, "hedge_factor must be >= 1", self.hedge_factor)
        _check(self.hedge_slack_ms >= 0, "hedge_slack_ms must be >= 0", self.hedge_slack_ms)
        _check(self.call_deadline_ms > 0, "call_deadline_ms must be > 0", self.call_deadline_ms)
        _check(
            self.threshold_uplink_bps >= 0,
            "threshold_uplink_bps must be >= 0",
            self.threshold_uplink_bps,
        )
        _check(
            self.threshold_src_len >= 0, "threshold_src_len must be >= 0", self.threshold_src_len
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "policy") -> PolicyConfig:
        """Build from a YAML mapping; unknown keys and bad values raise ``ConfigError``."""
        data = dict(data or {})
        nested = {}
        for key, sub in (("estimators", EstimatorConfig), ("length", LengthConfig)):
            if key in data:
                nested[key] = _build(sub, data.pop(key), f"{where}.{key}")
        return _build(cls, data, where, **nested)


def payload_bytes(src_len: int, hidden_size: int, codec: str, overhead_bytes: int = 0) -> int:
    """Bytes one request uploads: hidden states (src_len, hidden) in ``codec`` plus overhead."""
    per_element, per_token = CODECS[codec]
    return src_len * (hidden_size * per_element + per_token) + overhead_bytes


def _check(ok: bool, message: str, value: Any) -> None:
    if not ok or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{message}, got {value!r}")


def _build(cls: type, data: Any, where: str, **extra: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    try:
        return cls(**data, **extra)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
