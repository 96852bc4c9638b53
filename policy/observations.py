"""Observations in, Decision out: the two values that cross the policy's boundary.

``Observations`` is everything the policy may know about one request at the moment it is
routed, all of it measured in the past (the edge agent's probes, or the simulator replaying
them). ``Decision`` is the answer. Both are frozen so a decision can be logged, compared and
replayed bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from tandem.policy.energy import RADIOS


class Route(StrEnum):
    """Where the decoder runs for one request."""

    LOCAL = "local"
    CLOUD = "cloud"
    HANDOFF = "handoff"
    """Decode on the device at once and upload in parallel; the cloud continues from the
    device's progress when the upload lands, and the faster stream wins."""


@dataclass(frozen=True)
class Observations:
    """What the policy sees for one request, right after the encoder ran on the device.

    Network fields are ``None`` while unknown (no sample yet, or all samples too old); the
    policy then uses its configured priors. Times are measured from the decision, i.e. the
    encoder's cost is already paid on either route and is not part of any prediction.
    """

    src_len: int
    """Source tokens (the encoder's sequence length): sets the upload size."""
    predicted_tokens: float
    """Decoder steps this request is expected to need (see ``policy.length``)."""
    predicted_tokens_sd: float = 0.0
    """Typical error of that prediction, in steps (``LengthPrediction.sd``)."""
    online: bool = True
    """False when the device has no connectivity or the outage detector says so."""
    outage_detected: bool = False
    """``online`` is False only because the outage detector says so (failed or overdue
    probes and calls), not because the device has no connectivity or no cloud: a race
    (HANDOFF) still costs no time then, since the device decodes at once."""
    breaker_open: bool = False
    """The cloud client's circuit breaker is open: the cloud is failing, do not call it."""
    local_only: bool = False
    """Privacy flag of the request: its hidden states must never leave the device."""
    byte_budget_left: float | None = None
    """Bytes the metered network may still carry; None when the network is not metered."""
    rtt_ms: float | None = None
    """Typical round-trip time to the cloud (windowed median)."""
    rtt_high_ms: float | None = None
    """Pessimistic round-trip time (high windowed quantile or EWMA, whichever is larger)."""
    uplink_bps: float | None = None
    """Typical uplink throughput in bits/s, from past uploads."""
    uplink_low_bps: float | None = None
    """Pessimistic uplink throughput in bits/s (low windowed quantile or EWMA, the smaller)."""
    loss_rate: float = 0.0
    """Fraction of recent cloud calls and probes that failed or timed out (0..1)."""
    cpu_load: float = 0.0
    """Fraction of the device's CPU busy with other work (0..1), measured just before the
    decision — e.g. ``load_from_timing`` of the encoder that just ran."""
    local_backlog_ms: float = 0.0
    """Device decoding work already queued ahead of this request."""
    local_ms_per_token: float | None = None
    """Calibrated local cost per decoder step at the current load; overrides the profile."""
    cloud_ms_per_token: float | None = None
    """Calibrated cloud cost per decoder step; overrides the cloud profile."""
    cloud_batch: int = 1
    """Sequences the cloud currently decodes together (its last report); sets its step cost."""
    cloud_queue_ms: float = 0.0
    """Wait in the cloud's queue before decoding starts, as last reported by the service."""
    network_type: str = "lte"
    """Radio the device reaches the cloud through: a key of ``policy.energy.RADIOS`` (lte, 3g,
    5g, wifi); sets the radio's power state machine."""
    radio_idle_s: float | None = None
    """Seconds since the radio last carried this agent's data (None: never): whether a cloud
    call now pays a promotion and a whole tail, or only extends the tail it is in."""
    cloud_overrun_ms: float = 0.0
    """How far recent CLOUD decisions ran past their predicted time to the last token (an
    EWMA over finished requests, a request on time or early counting 0; see
    ``AgentKnowledge.request_settled``): a link whose calls stall now and then shows it here
    before its loss rate does."""

    def __post_init__(self) -> None:
        # A bad observation is a bug in the caller (probes or simulator), hence ValueError.
        if self.src_len < 0:
            raise ValueError(f"observations: src_len must be >= 0, got {self.src_len}")
        if not (self.predicted_tokens >= 0 and math.isfinite(self.predicted_tokens)):
            raise ValueError(
                f"observations: predicted_tokens must be finite and >= 0, got {self.predicted_tokens}"
            )
        if not self.predicted_tokens_sd >= 0:
            raise ValueError(
                f"observations: predicted_tokens_sd must be >= 0, got {self.predicted_tokens_sd}"
            )
        if not 0.0 <= self.loss_rate <= 1.0:
            raise ValueError(f"observations: loss_rate must be in [0, 1], got {self.loss_rate}")
        if not 0.0 <= self.cpu_load <= 1.0:
            raise ValueError(f"observations: cpu_load must be in [0, 1], got {self.cpu_load}")
        if not (self.cloud_overrun_ms >= 0 and math.isfinite(self.cloud_overrun_ms)):
            raise ValueError(
                f"observations: cloud_overrun_ms must be finite and >= 0, got {self.cloud_overrun_ms}"
            )
        if self.cloud_batch < 1:
            raise ValueError(f"observations: cloud_batch must be >= 1, got {self.cloud_batch}")
        if self.network_type not in RADIOS:
            raise ValueError(
                f"observations: network_type must be one of {sorted(RADIOS)}, "
                f"got {self.network_type!r}"
            )
        for name in ("uplink_bps", "uplink_low_bps", "rtt_ms", "rtt_high_ms"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"observations: {name} must be >= 0 or None, got {value}")


@dataclass(frozen=True)
class Decision:
    """Where to decode one request, and why.

    ``local_ms``/``cloud_ms`` are the predicted times from the decision to the last token on
    each route (``inf`` where a route is impossible, e.g. the cloud while offline); policies that
    do not predict (``always_local``) still fill them so logs are comparable.
    """

    route: Route
    reason: str
    """Short machine-readable cause: offline, breaker_open, local_only, byte_budget,
    cloud_faster, local_faster, handoff_faster, least_cost, least_energy, always_local,
    always_cloud, threshold_cloud, threshold_local."""
    local_ms: float
    cloud_ms: float
    hedge_deadline_ms: float | None = None
    """For CLOUD: start decoding locally too if no first token has arrived this long after the
    request was sent; the first to finish wins. None: no hedge (only the call deadline)."""
    handoff_ms: float | None = None
    """Predicted time to the last token by HANDOFF, where the policy priced it (``handoff``)."""
    energy_j: float | None = None
    """Predicted device energy (compute + radio) of the chosen route, where the policy priced
    it (``cost_model``, ``handoff``)."""
    latency_credit_ms: float | None = None
    """``min_energy`` with ``latency_budget_scope: mean``: the latency credit left after this
    decision (``remember`` carries it to the next)."""
