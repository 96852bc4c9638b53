"""AgentKnowledge: what an agent has learnt, one method per event, observations out.

The edge agent and the simulator both drive one ``AgentKnowledge`` — the network estimators,
the output-length model, the cloud's last queue report and the policy's own memory — by
telling it what happened and when::

    k = AgentKnowledge(cfg, device)
    k.probe_sent(t)                   # a ping leaves ...
    k.probe_result(t, rtt_ms)         # ... and returns (None: lost or timed out)
    k.call_late(t, sent_s, nbytes)    # a call waited too long without any token
    k.call_failed(t)                  # a call failed (after a token, or refused)
    k.call_done(t, nbytes, ttft_ms, ...)   # a call completed
    k.request_done(t, lang, src_len, steps)
    k.request_settled(t, decided_s, route, predicted_ms)   # its last token came at t
    k.radio_used(start, end, up_bytes, down_bytes)   # a call held the radio (returns joules)
    k.network_type_seen(t, "lte")     # the device now reaches the cloud over this radio
    obs = k.observations(t, src_len, lang, encode_ms, ...)
    decision = decide(obs, device, cloud, cfg, k.policy_state); k.decided(decision)

Pure on purpose (DESIGN.md "Principles"): no clock, no I/O, no lock — time is an argument, so
the simulator replays the agent's learning on trace time, and a learning rule written here is
written once. The agent serialises calls under its own lock. Each event also exists as a
frozen value (``ProbeSent``, ...) that ``apply`` dispatches, so a caller can hold events until
the instant the agent would learn them (the simulator's event queue) or replay a log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from tandem.policy.config import PolicyConfig
from tandem.policy.decide import PolicyState, load_from_timing, remember
from tandem.policy.energy import RADIOS, RadioState, idle_s, transfer_j
from tandem.policy.estimators import (
    NetworkEstimate,
    NetworkState,
    estimate,
    observe_outcome,
    observe_probe_result,
    observe_probe_sent,
    observe_ttft,
    observe_upload,
)
from tandem.policy.length import LengthModel, observe_length, predict_length
from tandem.policy.observations import Decision, Observations, Route
from tandem.policy.profile import Profile

log = logging.getLogger(__name__)

MIN_UPLOAD_MS = 0.1
"""Floor of an upload time inferred from a first token (RTT and server times may exceed it)."""


@dataclass(frozen=True)
class ProbeSent:
    """A probe (ping) left."""

    t_s: float


@dataclass(frozen=True)
class ProbeResult:
    """The outstanding probe came back after ``rtt_ms``, or was lost / timed out (None)."""

    t_s: float
    rtt_ms: float | None


@dataclass(frozen=True)
class CallLate:
    """A cloud call sent at ``sent_s`` had no token by ``t_s``: the agent stopped waiting for it
    (hedge, first-token timeout, deadline)."""

    t_s: float
    sent_s: float
    nbytes: float
    hedged: bool = False
    """The agent started decoding locally and kept the call going (a hedge), rather than
    giving up on it (first-token timeout, deadline)."""


@dataclass(frozen=True)
class CallFailed:
    """A cloud call failed for a reason that says nothing about the upload (a broken stream,
    a refusal, an unreachable cloud)."""

    t_s: float


@dataclass(frozen=True)
class CallDone:
    """A cloud call completed with its final message."""

    t_s: float
    nbytes: float
    ttft_ms: float | None
    """Sending to first token; None when no token came (nothing learnt about the link)."""
    upload_s: float | None = None
    """How long the upload took, where the caller knows it (the simulator); None: inferred
    from the first token minus the RTT and the server's own times (the agent)."""
    queue_ms: float | None = None
    """The cloud's reported queue wait; None: no report."""
    first_step_ms: float = 0.0
    """The cloud's reported time for its first decoder step (for the inference above)."""


@dataclass(frozen=True)
class RequestDone:
    """A request finished after ``steps`` decoder steps (EOS included)."""

    t_s: float
    lang: str
    src_len: int
    steps: int


@dataclass(frozen=True)
class RequestSettled:
    """The last token of a request routed to ``route`` at ``decided_s`` came at ``t_s``,
    whatever happened on the way (a hedge that fired, a fallback); the policy had predicted
    ``predicted_ms`` from the decision to the last token on that route."""

    t_s: float
    decided_s: float
    route: Route
    predicted_ms: float

    @classmethod
    def of(cls, t_s: float, decided_s: float, decision: Decision) -> RequestSettled:
        """The event of a request that ``decision`` routed at ``decided_s``."""
        predicted = {Route.LOCAL: decision.local_ms, Route.CLOUD: decision.cloud_ms}
        fallback = decision.handoff_ms if decision.handoff_ms is not None else math.inf
        return cls(t_s, decided_s, decision.route, predicted.get(decision.route, fallback))


@dataclass(frozen=True)
class RadioUsed:
    """One cloud call (CLOUD or HANDOFF) held the radio from ``start_s`` to ``end_s`` (when its
    last byte went or came, or it was cancelled), moving ``up_bytes`` and ``down_bytes``.
    Delivered at ``end_s``: ``t_s`` is ``end_s``."""

    t_s: float
    start_s: float
    up_bytes: float
    down_bytes: float


@dataclass(frozen=True)
class NetworkTypeSeen:
    """The device's connectivity changed to ``network_type`` (a key of ``energy.RADIOS``)."""

    t_s: float
    network_type: str


Event = (
    ProbeSent
    | ProbeResult
    | CallLate
    | CallFailed
    | CallDone
    | RequestDone
    | RequestSettled
    | RadioUsed
    | NetworkTypeSeen
)


class AgentKnowledge:
    """The estimators, the length model, the policy state and the radio's state (network type,
    when it last carried data) of one agent; not thread-safe."""

    def __init__(
        self,
        cfg: PolicyConfig,
        device: Profile,
        *,
        cloud_batch: int = 1,
        cloud_queue_ms: float = 0.0,
        network_type: str = "lte",
    ) -> None:
        """``device`` is this device's profile (scaled to its speed): the encoder's expected
        time, against which a measured one reads as CPU load. ``cloud_batch`` and
        ``cloud_queue_ms`` are what the agent believes of the cloud before any report."""
        self.cfg = cfg
        self.device = device
        self.net = NetworkState()
        self.lengths = LengthModel()
        self.policy_state = PolicyState()
        self.cloud_batch = cloud_batch
        self.cloud_queue_ms = cloud_queue_ms
        self.network_type_seen(0.0, network_type)
        self.radio = RadioState()
        self.cloud_overrun_ms = 0.0

    # -- events -------------------------------------------------------------------------------

    def probe_sent(self, t_s: float) -> None:
        self.net = observe_probe_sent(self.net, t_s)

    def probe_result(self, t_s: float, rtt_ms: float | None) -> None:
        self.net = observe_probe_result(self.net, t_s, rtt_ms, self.cfg.estimators)

    def call_late(self, t_s: float, sent_s: float, nbytes: float, hedged: bool = False) -> None:
        """A failure now, and a *censored* throughput sample: the whole payload over the time
        spent, an upper bound that notices a stall without waiting for it to end — unless a
        hedge fired before the link usually carries the call (the payload at the typical
        uplink, plus the RTT), which is no news. The whole
        payload, whether or not the upload had in fact finished: a gRPC call says neither how
        far the upload got nor whether it is done (no TCP_INFO per call)."""
        cfg = self.cfg.estimators
        est = estimate(self.net, t_s, cfg)
        link_ms = nbytes * 8000.0 / est.uplink_typical_bps + (est.rtt_ms or 0.0)
        if hedged and (t_s - sent_s) * 1000.0 < link_ms:
            # A hedge that fired sooner than the link usually carries the upload and a round
            # trip: the agent started decoding locally early, on purpose, and the call goes on.
            # No news - neither a failure nor a bound on the throughput.
            return
        net = observe_outcome(self.net, t_s, False, cfg)
        self.net = observe_upload(net, t_s, nbytes, t_s - sent_s, cfg, finished=False)

    def call_failed(self, t_s: float) -> None:
        self.net = observe_outcome(self.net, t_s, False, self.cfg.estimators)

    def call_done(
        self,
        t_s: float,
        nbytes: float,
        ttft_ms: float | None,
        upload_s: float | None = None,
        queue_ms: float | None = None,
        first_step_ms: float = 0.0,
    ) -> float:
        """A success, the time to first token and the upload's duration; returns that duration
        in ms (0 when no token came)."""
        cfg = self.cfg.estimators
        net = observe_outcome(self.net, t_s, True, cfg)
        upload_ms = 0.0
        if ttft_ms is not None:
            if upload_s is None:
                rtt_ms = estimate(net, t_s, cfg).rtt_ms or 0.0
                server_ms = (queue_ms or 0.0) + first_step_ms
                upload_ms = max(ttft_ms - rtt_ms - server_ms, MIN_UPLOAD_MS)
                upload_s = upload_ms / 1000
            else:
                upload_ms = upload_s * 1000.0
            net = observe_ttft(net, t_s, ttft_ms, cfg)
            net = observe_upload(net, t_s, nbytes, upload_s, cfg)
        self.net = net
        if queue_ms is not None:
            self.cloud_queue_ms = queue_ms
        return upload_ms

    def request_done(self, t_s: float, lang: str, src_len: int, steps: int) -> None:
        self.lengths = observe_length(self.lengths, lang, src_len, steps, self.cfg.length)

    def request_settled(
        self, t_s: float, decided_s: float, route: Route, predicted_ms: float
    ) -> None:
        """A CLOUD request's time from the decision to its last token against its prediction:
        how far past it ran (0 when on time or early) moves ``cloud_overrun_ms`` by
        ``overrun_alpha``. The prediction already prices a lost attempt at the loss rate; what
        it misses is a link whose uploads stall without failing probes, and the hedge of the
        next CLOUD decision shrinks by it (``decide.latency_hedge_ms``). Other routes, and a
        prediction that was no time at all, teach nothing here."""
        actual_ms = (t_s - decided_s) * 1000.0
        if route is not Route.CLOUD or not math.isfinite(predicted_ms + actual_ms):
            return
        over_ms = max(0.0, actual_ms - predicted_ms)
        self.cloud_overrun_ms += self.cfg.overrun_alpha * (over_ms - self.cloud_overrun_ms)

    def radio_used(self, start_s: float, end_s: float, up_bytes: float, down_bytes: float) -> float:
        """A call held the radio from ``start_s`` to ``end_s``; returns the energy it added
        (``energy.transfer_j``: promotion and whole tail if the radio was idle, else only the
        part of the tail it cut short), so a caller that keeps a ledger books the same joules
        the policy prices."""
        joules, self.radio = transfer_j(
            RADIOS[self.network_type], self.radio, start_s, end_s, up_bytes, down_bytes
        )
        return joules

    def network_type_seen(self, t_s: float, network_type: str) -> None:
        if network_type not in RADIOS:
            raise ValueError(f"network_type must be one of {sorted(RADIOS)}, got {network_type!r}")
        self.network_type = network_type

    def decided(self, decision: Decision) -> None:
        """The policy routed a request: remember it for the next decision (hysteresis)."""
        self.policy_state = remember(self.policy_state, decision)

    def apply(self, event: Event) -> None:
        """Deliver a held event: the same as calling its method at ``event.t_s``."""
        match event:
            case ProbeSent(t_s):
                self.probe_sent(t_s)
            case ProbeResult(t_s, rtt_ms):
                self.probe_result(t_s, rtt_ms)
            case CallLate(t_s, sent_s, nbytes, hedged):
                self.call_late(t_s, sent_s, nbytes, hedged)
            case CallFailed(t_s):
                self.call_failed(t_s)
            case CallDone(t_s, nbytes, ttft_ms, upload_s, queue_ms, first_step_ms):
                self.call_done(t_s, nbytes, ttft_ms, upload_s, queue_ms, first_step_ms)
            case RequestDone(t_s, lang, src_len, steps):
                self.request_done(t_s, lang, src_len, steps)
            case RequestSettled(t_s, decided_s, route, predicted_ms):
                self.request_settled(t_s, decided_s, route, predicted_ms)
            case RadioUsed(t_s, start_s, up_bytes, down_bytes):
                self.radio_used(start_s, t_s, up_bytes, down_bytes)
            case NetworkTypeSeen(t_s, network_type):
                self.network_type_seen(t_s, network_type)
            case _:
                raise TypeError(f"not a knowledge event: {event!r}")

    # -- what it knows ------------------------------------------------------------------------

    def estimate(self, now_s: float) -> NetworkEstimate:
        return estimate(self.net, now_s, self.cfg.estimators)

    def observations(
        self,
        now_s: float,
        src_len: int,
        lang: str,
        encode_ms: float,
        *,
        local_only: bool = False,
        other_load: float = 0.0,
        local_backlog_ms: float = 0.0,
        byte_budget_left: float | None = None,
        has_cloud: bool = True,
        breaker_open: bool = False,
        breaker_probe: bool = False,
    ) -> Observations:
        """What the policy sees for a request whose encoder just took ``encode_ms``.

        ``other_load``: CPU share of other processes where the platform tells (the busier of it
        and what the encoder's timing implies counts). ``has_cloud``: a cloud is configured at
        all. ``breaker_open``/``breaker_probe``: the caller's circuit breaker is open / lets its
        one half-open probe through — an outage ends with a success, so while the breaker
        probes the cloud counts as online even without pings.
        """
        est = self.estimate(now_s)
        predicted = predict_length(self.lengths, lang, src_len, self.cfg.length)
        return Observations(
            src_len=src_len,
            predicted_tokens=predicted.tokens,
            predicted_tokens_sd=predicted.sd,
            online=has_cloud and (not est.outage or breaker_probe),
            outage_detected=has_cloud and est.outage and not breaker_probe,
            breaker_open=breaker_open,
            local_only=local_only,
            byte_budget_left=byte_budget_left,
            rtt_ms=est.rtt_ms,
            rtt_high_ms=est.rtt_high_ms,
            uplink_bps=est.uplink_bps,
            uplink_low_bps=est.uplink_low_bps,
            loss_rate=est.loss_rate,
            cpu_load=max(other_load, load_from_timing(encode_ms, self.device.encoder_ms(src_len))),
            local_backlog_ms=local_backlog_ms,
            cloud_batch=self.cloud_batch,
            cloud_queue_ms=self.cloud_queue_ms,
            network_type=self.network_type,
            radio_idle_s=idle_s(self.radio, now_s),
            cloud_overrun_ms=self.cloud_overrun_ms,
        )
