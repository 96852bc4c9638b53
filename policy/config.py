"""PolicyConfig: every tunable of routing, checked once when it is built.

Three frozen dataclasses — ``PolicyConfig`` holds an ``EstimatorConfig`` and a
``LengthConfig`` — so the edge agent and the simulator load one mapping (a YAML section) with
``PolicyConfig.from_dict`` (``tandem.config.build``) and then trust the object. Unknown keys
are rejected: a typo in a margin must fail at start, not silently fall back to a default.
Bounds are checked in ``__post_init__``, so a config built in code is checked too.

Nothing here is tuned per network trace; every default is a general mechanism (a quantile, a
margin, a prior) whose reason is given on the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandem.config import bound, build, one_of, require, shown

POLICIES: tuple[str, ...] = ("always_local", "always_cloud", "threshold", "cost_model", "handoff")
"""Routing policies ``decide`` implements (the simulator's ``oracle`` is not one: it needs the
future). ``cost_model`` chooses LOCAL or CLOUD; ``handoff`` also weighs HANDOFF."""

OBJECTIVES: tuple[str, ...] = ("latency", "weighted", "min_energy")
"""What ``cost_model`` and ``handoff`` minimise (see ``PolicyConfig.objective``)."""

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
        bound(self, "prior_rtt_ms", "overdue_min_ms", ge=0)
        bound(self, "prior_uplink_bps", "prior_weight", "halflife_s", "window_s", gt=0)
        bound(self, "revert_s", "overdue_factor", gt=0)
        bound(self, "max_samples", "outage_failures", ge=1)
        bound(self, "ewma_alpha", "loss_alpha", gt=0, le=1)
        bound(self, "low_quantile", ge=0, le=0.5)
        bound(self, "high_quantile", ge=0.5, le=1)


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
        bound(self, "prior_intercept", "prior_slope", ge=0)
        bound(self, "prior_weight", gt=0)
        bound(self, "forget", gt=0, le=1)
        require(
            0 < self.min_tokens <= self.max_tokens,
            f"min_tokens must be in (0, max_tokens], got {shown(self.min_tokens)}",
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
    overrun_alpha: float = 0.3
    """Weight of each finished CLOUD request in ``Observations.cloud_overrun_ms`` (a memory of
    about three requests): cellular stalls come and go within seconds, so the overrun must
    rise with the first stalled calls and fall again once calls are on time."""
    call_deadline_ms: float = 2000.0
    """Whole-call deadline of the cloud client; prices a failed CLOUD attempt without hedge."""
    threshold_uplink_bps: float = 500_000.0
    """``threshold``: CLOUD needs at least this typical uplink ..."""
    threshold_src_len: int = 16
    """... and at least this many source tokens (longer inputs, longer outputs)."""
    objective: str = "latency"
    """``latency``: the fastest predicted route. ``weighted``: the least predicted latency +
    ``energy_weight_ms_per_j`` x device energy + ``bytes_weight_ms_per_mb`` x uploaded bytes.
    ``min_energy``: the least predicted device energy among routes whose predicted latency is
    within ``latency_budget_factor`` x the fastest route's."""
    energy_weight_ms_per_j: float = 0.0
    """``weighted``: milliseconds of latency one joule of device energy is worth."""
    bytes_weight_ms_per_mb: float = 0.0
    """``weighted``: milliseconds of latency one uploaded megabyte (10^6 bytes) is worth."""
    latency_budget_factor: float = 1.15
    """``min_energy``: how much slower than the fastest route a cheaper route may be."""
    latency_budget_scope: str = "mean"
    """``min_energy``: ``mean`` — the budget holds for the sum of predicted latencies over
    requests: what one request leaves unused (factor x its fastest route - its chosen route)
    is credit a later request may spend, so the slack goes where it saves most energy (a
    radio kept out of its tail); ``request`` — each request's route within the factor of its
    own fastest route. With ``request`` few routes ever qualify (LOCAL and CLOUD rarely lie
    within 15 % of each other) and the saving is small (docs/energy.md)."""
    credit_ms_per_radio_cycle: float = 420.0
    """``min_energy`` with a mean budget: the exchange rate of latency credit. A route that
    needs credit (slower than the factor alone allows) is taken only where it saves at least
    one radio cycle's energy (an idle radio's promotion and whole tail, ``RadioModel.cycle_j``:
    12.6 J on LTE, 7.4 J on 3G) per this many milliseconds it adds over the route the factor
    alone would take — so the credit goes to the requests where it buys most energy, and what
    counts as "most" follows the radio: on LTE 0.030 J per ms, on 3G 0.018. Spending below the
    rate squanders credit that a later call to an idle radio would need; above it, credit is
    left unspent. 420 ms was chosen on the shared traces (a single J/ms rate for every radio
    met the 30 % saving on LTE or on 3G, not on both: docs/energy.md)."""
    handoff_band: float = 10.0
    """``handoff`` with the latency objective races (HANDOFF) unless one single route is
    predicted faster than the other by more than this fraction (LOCAL or CLOUD then, the
    obvious winner). The default races unless one route is an order of magnitude faster:
    predictions are pessimistic and links change within a request, and in the shared traces
    a race won time on every kind of network (docs/results/simulation.md). Spending less of
    the battery is the ``weighted`` and ``min_energy`` objectives' job."""
    handoff_stall_ms: float = 250.0
    """HANDOFF, after switching to the cloud's stream: no token for this long, and the device
    resumes decoding locally from the tokens it has."""
    prefix_token_bytes: int = 4
    """Uplink bytes per token of the device's prefix in a HANDOFF call (an int32 id); the
    message's overhead is ``token_bytes``."""
    estimators: EstimatorConfig = field(default_factory=EstimatorConfig)
    length: LengthConfig = field(default_factory=LengthConfig)

    def __post_init__(self) -> None:
        one_of(self, "policy", POLICIES)
        one_of(self, "objective", OBJECTIVES)
        one_of(self, "latency_budget_scope", ("request", "mean"))
        bound(self, "energy_weight_ms_per_j", "bytes_weight_ms_per_mb", "handoff_band", ge=0)
        bound(self, "latency_budget_factor", ge=1)
        bound(self, "credit_ms_per_radio_cycle", gt=0)
        bound(self, "handoff_stall_ms", gt=0)
        bound(self, "prefix_token_bytes", ge=0)
        one_of(self, "codec", sorted(CODECS))
        bound(self, "payload_overhead_bytes", "token_bytes", "length_margin_sd", ge=0)
        bound(self, "hedge_slack_ms", "threshold_uplink_bps", "threshold_src_len", ge=0)
        bound(self, "max_cpu_load", "hysteresis", ge=0, lt=1)
        bound(self, "hedge_factor", ge=1)
        bound(self, "call_deadline_ms", gt=0)
        bound(self, "overrun_alpha", gt=0, le=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "policy") -> PolicyConfig:
        """Build from a YAML mapping; unknown keys and bad values raise ``ConfigError``."""
        return build(cls, data, where)


def payload_bytes(src_len: int, hidden_size: int, codec: str, overhead_bytes: int = 0) -> int:
    """Bytes one request uploads: hidden states (src_len, hidden) in ``codec`` plus overhead."""
    per_element, per_token = CODECS[codec]
    return src_len * (hidden_size * per_element + per_token) + overhead_bytes
