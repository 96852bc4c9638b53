"""decide: Observations (+ profiles, config, state) -> Decision. The routing policy itself.

Pure on purpose: the simulator replays traces through this exact function, and the edge agent
calls it with live measurements; neither can tell the difference. No I/O, no clock, no RNG.

Order of rules, for every policy:

1. ``local_only`` request -> LOCAL (privacy outranks speed);
2. offline or outage detected -> LOCAL (``handoff`` racing for latency: an outage that only
   the detector declares -> HANDOFF, which costs no time); circuit breaker open -> LOCAL;
3. metered network and the upload would exceed the byte budget -> LOCAL;
4. the policy proper: ``always_local``, ``always_cloud``, ``threshold`` or ``cost_model``.

``cost_model`` predicts the time from now to the last token on each route:

- LOCAL  = backlog + decode(n steps) on the device profile x slowdown(cpu_load);
- CLOUD  = upload(payload at the pessimistic uplink) + RTT + cloud queue + cloud cache init
  + decode(n steps) on the cloud profile at the cloud's batch size
  + whatever of the token stream the link cannot carry while the cloud decodes;
  and prices failure: with probability ``loss_rate`` the attempt is lost and the request
  finishes locally after the hedge deadline (or the call deadline, without hedge).

It picks the smaller, with hysteresis, and gives CLOUD a hedge deadline: ``hedge_factor`` x the
expected time to first token + ``hedge_slack_ms``, and with the latency objective never more
than the time the cloud is predicted to save less its recent overrun (``latency_hedge_ms``,
``Observations.cloud_overrun_ms``); if no token has arrived by
then the agent also starts decoding locally and keeps whichever finishes first. Every term of CLOUD grows as
bandwidth shrinks, so more bandwidth never turns CLOUD into LOCAL.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from tandem.policy.config import PolicyConfig, payload_bytes
from tandem.policy.energy import RADIOS, compute_j, marginal_j
from tandem.policy.observations import Decision, Observations, Route
from tandem.policy.profile import Profile

log = logging.getLogger(__name__)

COST_REASONS = frozenset(
    {"cloud_faster", "local_faster", "handoff_faster", "least_cost", "least_energy"}
)


@dataclass(frozen=True)
class PolicyState:
    """What ``decide`` remembers between requests: the last cost-based route (hysteresis) and
    the latency credit of ``min_energy`` with a mean budget."""

    last_route: Route | None = None
    latency_credit_ms: float = 0.0


def remember(state: PolicyState, decision: Decision) -> PolicyState:
    """State for the next request. Forced routes (offline, local_only, ...) do not count: they
    say nothing about which route is faster."""
    if decision.reason in COST_REASONS:
        credit = decision.latency_credit_ms
        return PolicyState(
            last_route=decision.route,
            latency_credit_ms=state.latency_credit_ms if credit is None else credit,
        )
    return state


def slowdown(cpu_load: float, max_cpu_load: float = 0.9) -> float:
    """How much longer local decoding takes when other work uses ``cpu_load`` of the CPU.

    Decoding gets the share the other work leaves: 1 / (1 - load), capped at
    1 / (1 - max_cpu_load). The simulator's device uses the same law, so it is the one
    documented assumption about load rather than two.
    """
    return 1.0 / (1.0 - min(max(cpu_load, 0.0), max_cpu_load))


def load_from_timing(measured_ms: float, expected_ms: float) -> float:
    """CPU load implied by a run that took ``measured_ms`` where the profile says ``expected_ms``.

    The inverse of ``slowdown``: the edge agent times the encoder it just ran (same cores,
    milliseconds before the decision) and passes the result as ``Observations.cpu_load``. This
    needs no system-wide CPU counters (which mobile OSes do not expose to apps) and has no lag.
    """
    if measured_ms <= 0 or expected_ms <= 0:
        return 0.0
    return min(max(1.0 - expected_ms / measured_ms, 0.0), 1.0)


@dataclass(frozen=True)
class RouteCosts:
    """Predicted milliseconds from the decision to the last token, the hedge deadline, and what
    each route costs the device (joules) and the uplink (bytes)."""

    local_ms: float
    cloud_ms: float
    """Expected CLOUD time including the price of a failed attempt."""
    ttft_ms: float
    """Expected time to the first cloud token (typical uplink and RTT)."""
    hedge_deadline_ms: float | None
    payload_bytes: int
    handoff_ms: float = math.inf
    """Expected HANDOFF time: the race of the local run and the cloud's continuation."""
    local_j: float = 0.0
    cloud_j: float = 0.0
    handoff_j: float = 0.0
    handoff_bytes: float = 0.0
    """Uplink bytes of a HANDOFF call: the hidden states and the device's prefix."""


def predict_costs(
    obs: Observations, device: Profile, cloud: Profile, cfg: PolicyConfig
) -> RouteCosts:
    """The cost model's arithmetic, exposed so logs and tests can show what ``decide`` saw."""
    # Both routes are priced at a pessimistic length: local decoding costs several times more
    # per token, so an underestimated output hurts LOCAL most (and fills the latency tail).
    n = obs.predicted_tokens + cfg.length_margin_sd * obs.predicted_tokens_sd
    if obs.local_ms_per_token is not None:
        local_decode = obs.local_ms_per_token * n
    else:
        local_decode = device.decode_ms(n) * slowdown(obs.cpu_load, cfg.max_cpu_load)
    local_ms = obs.local_backlog_ms + local_decode

    prior = cfg.estimators
    rtt = obs.rtt_ms if obs.rtt_ms is not None else prior.prior_rtt_ms
    bw = obs.uplink_bps if obs.uplink_bps is not None else prior.prior_uplink_bps
    bw_low = obs.uplink_low_bps if obs.uplink_low_bps is not None else bw
    nbytes = payload_bytes(obs.src_len, device.hidden_size, cfg.codec, cfg.payload_overhead_bytes)
    upload_ms = nbytes * 8000.0 / bw_low if bw_low > 0 else math.inf
    upload_typical_ms = nbytes * 8000.0 / bw if bw > 0 else math.inf
    if obs.cloud_ms_per_token is not None:
        cloud_decode = obs.cloud_ms_per_token * n
        first_step = obs.cloud_ms_per_token
    else:
        cloud_decode = cloud.decode_ms(n, obs.cloud_batch)
        first_step = cloud.step_ms(obs.cloud_batch, 1)
    # The downlink is not measured; the uplink stands in for it (cellular downlinks are faster).
    stream_ms = n * cfg.token_bytes * 8000.0 / bw_low if bw_low > 0 else math.inf
    # queue + the service's fixed cost + cache init
    at_cloud = obs.cloud_queue_ms + cloud.request_overhead_ms + cloud.encoder_ms(obs.src_len)
    cloud_ms = upload_ms + rtt + at_cloud + max(cloud_decode, stream_ms)
    ttft_ms = upload_typical_ms + rtt + at_cloud + first_step
    hedge = cfg.hedge_factor * ttft_ms + cfg.hedge_slack_ms if cfg.hedge else None
    call_ms = cloud_ms
    if obs.loss_rate > 0 and math.isfinite(cloud_ms):
        wait = hedge if hedge is not None else cfg.call_deadline_ms
        failed = min(wait, cfg.call_deadline_ms) + local_ms
        cloud_ms = (1.0 - obs.loss_rate) * cloud_ms + obs.loss_rate * failed

    # -- HANDOFF: the local run starts now; the upload goes in parallel, and the cloud continues
    # from the k0 tokens the device has when the upload has gone (its prefix follows it).
    p = obs.loss_rate
    lpt = local_decode / n if n > 0 else 0.0  # local ms per token

    def local_tokens_by(ms: float) -> float:
        if lpt <= 0 or not math.isfinite(ms):
            return n
        return min(n, max(0.0, (ms - obs.local_backlog_ms) / lpt))

    k0 = local_tokens_by(upload_ms)
    ho_bytes = nbytes + cfg.token_bytes + cfg.prefix_token_bytes * k0
    ho_cloud = math.inf
    switch_ms = math.inf
    rest = n - k0
    if math.isfinite(upload_ms) and rest > 0:
        prefix_ms = (cfg.token_bytes + cfg.prefix_token_bytes * k0) * 8000.0 / bw_low
        if obs.cloud_ms_per_token is not None:
            rest_decode = obs.cloud_ms_per_token * rest
        else:
            rest_decode = cloud.decode_ms(n, obs.cloud_batch) - cloud.decode_ms(k0, obs.cloud_batch)
        force_ms = cloud.encoder_ms(k0) if k0 > 0 else 0.0
        rest_stream = rest * cfg.token_bytes * 8000.0 / bw_low
        before = upload_ms + prefix_ms + rtt + at_cloud + force_ms
        ho_cloud = before + max(rest_decode, rest_stream)
        cpt = max(rest_decode, rest_stream) / rest  # cloud ms per token, as it reaches the device
        first = before + cpt
        if cpt < lpt:  # the cloud catches up with the local run, then passes it
            behind = max(0.0, local_tokens_by(first) - (k0 + 1))
            switch_ms = min(ho_cloud, first + behind * cpt * lpt / (lpt - cpt))
    handoff_ms = local_ms
    if ho_cloud < local_ms:
        handoff_ms = (1.0 - p) * ho_cloud + p * local_ms

    # -- energy: compute while the device decodes, radio while a call holds the link
    radio = RADIOS[obs.network_type]
    down = n * cfg.token_bytes
    local_j = compute_j(device.power_w, local_decode)
    cloud_j = math.inf
    if math.isfinite(call_ms):
        cloud_j = marginal_j(radio, obs.radio_idle_s, call_ms / 1000.0, nbytes, down)
        cloud_j += p * local_j  # a failed attempt ends in a local run
    ho_compute = local_decode
    ho_radio_ms = min(local_ms, ho_cloud) if math.isfinite(upload_ms) else local_ms
    ho_down = 0.0
    if ho_cloud < local_ms:
        ran = max(0.0, min(local_decode, switch_ms - obs.local_backlog_ms))
        ho_compute = (1.0 - p) * ran + p * local_decode
        ho_down = rest * cfg.token_bytes
    handoff_j = compute_j(device.power_w, ho_compute) + marginal_j(
        radio, obs.radio_idle_s, ho_radio_ms / 1000.0, ho_bytes, ho_down
    )
    return RouteCosts(
        local_ms,
        cloud_ms,
        ttft_ms,
        hedge,
        nbytes,
        handoff_ms=handoff_ms,
        local_j=local_j,
        cloud_j=cloud_j,
        handoff_j=handoff_j,
        handoff_bytes=ho_bytes,
    )


def decide(
    obs: Observations,
    device: Profile,
    cloud: Profile,
    cfg: PolicyConfig,
    state: PolicyState | None = None,
) -> Decision:
    """Route one request.

    ``device`` is the profile of this device (already scaled to its speed), ``cloud`` the
    cloud's; ``state`` is what ``remember`` returned after the previous decision (None at
    start). Never raises for valid inputs; offline is a normal state, answered with LOCAL.
    """
    if cfg.objective == "min_energy":
        # A latency budget over requests is about mean times, so uploads are priced at the
        # typical uplink, not the pessimistic one. The pessimistic quantile is most pessimistic
        # where this objective uploads least (few fresh samples, the prior weighs more), and
        # the budget, a multiple of the fastest route, would grow with its own abstinence.
        obs = dataclasses.replace(obs, uplink_low_bps=obs.uplink_bps)
    costs = predict_costs(obs, device, cloud, cfg)

    def local(reason: str) -> Decision:
        return Decision(Route.LOCAL, reason, costs.local_ms, costs.cloud_ms)

    def cloud_route(reason: str, hedge: float | None = None) -> Decision:
        return Decision(Route.CLOUD, reason, costs.local_ms, costs.cloud_ms, hedge)

    if obs.local_only:
        return local("local_only")
    # ``handoff`` racing for latency does not believe the outage detector blindly: the local run
    # starts at once either way, so a race costs no time and wins if the link is back.
    race_outage = cfg.policy == "handoff" and cfg.objective == "latency" and obs.outage_detected
    if not obs.online and not race_outage:
        return local("offline")
    if obs.breaker_open:
        return local("breaker_open")
    if obs.byte_budget_left is not None and costs.payload_bytes > obs.byte_budget_left:
        return local("byte_budget")
    if not obs.online:
        return Decision(
            Route.HANDOFF,
            "outage_race",
            costs.local_ms,
            costs.cloud_ms,
            handoff_ms=costs.handoff_ms,
            energy_j=costs.handoff_j,
        )

    policy = cfg.policy
    if policy == "always_local":
        return local("always_local")
    if policy == "always_cloud":
        return cloud_route("always_cloud")
    if policy == "threshold":
        bw = obs.uplink_bps if obs.uplink_bps is not None else cfg.estimators.prior_uplink_bps
        if bw >= cfg.threshold_uplink_bps and obs.src_len >= cfg.threshold_src_len:
            return cloud_route("threshold_cloud")
        return local("threshold_local")

    if policy == "handoff" or cfg.objective != "latency":
        credit = state.latency_credit_ms if state is not None else 0.0
        return _choose(
            costs,
            cfg,
            handoff=policy == "handoff",
            credit_ms=credit,
            overrun_ms=obs.cloud_overrun_ms,
            saving_j_per_ms=RADIOS[obs.network_type].cycle_j / cfg.credit_ms_per_radio_cycle,
        )

    # cost_model, latency objective
    last = state.last_route if state is not None else None
    if last is Route.CLOUD:
        go_cloud = costs.cloud_ms <= costs.local_ms * (1.0 + cfg.hysteresis)
    elif last is Route.LOCAL:
        go_cloud = costs.cloud_ms < costs.local_ms * (1.0 - cfg.hysteresis)
    else:
        go_cloud = costs.cloud_ms < costs.local_ms
    if go_cloud:
        return cloud_route("cloud_faster", latency_hedge_ms(costs, obs.cloud_overrun_ms))
    return local("local_faster")


def latency_hedge_ms(costs: RouteCosts, overrun_ms: float = 0.0) -> float | None:
    """The hedge deadline of a CLOUD route chosen for latency: the usual one (a first token
    later than expected), but never later than the time the cloud is predicted to save over
    local decoding, less what recent CLOUD requests ran past their predictions
    (``overrun_ms``, ``Observations.cloud_overrun_ms``). Beyond that, waiting for the cloud
    can only lose: with a hedge the cloud keeps going and the first to finish wins, so
    starting local decoding then costs this request no time, while a cloud that stalls (an
    outage starting) costs every millisecond waited. A saving no larger than the cloud's
    recent overrun is no saving to count on, so a near tie — or a link whose calls have been
    stalling — starts both at once."""
    if costs.hedge_deadline_ms is None:
        return None
    saving_ms = max(0.0, costs.local_ms - costs.cloud_ms - overrun_ms)
    return min(costs.hedge_deadline_ms, saving_ms)


def _choose(
    costs: RouteCosts,
    cfg: PolicyConfig,
    handoff: bool,
    credit_ms: float = 0.0,
    overrun_ms: float = 0.0,
    saving_j_per_ms: float = 0.0,
) -> Decision:
    """The priced choice among LOCAL, CLOUD and (``handoff``) HANDOFF under ``cfg.objective``.

    Candidates are tried in the order LOCAL, CLOUD, HANDOFF, and a tie keeps the earlier one:
    the simpler route wins a draw.
    """
    options = [
        (Route.LOCAL, costs.local_ms, costs.local_j, 0.0),
        (Route.CLOUD, costs.cloud_ms, costs.cloud_j, float(costs.payload_bytes)),
    ]
    if handoff:
        options.append((Route.HANDOFF, costs.handoff_ms, costs.handoff_j, costs.handoff_bytes))
    objective = cfg.objective
    credit: float | None = None
    if objective == "latency":
        single = min(options[:2], key=lambda o: o[1])
        best, reason = single, "cloud_faster" if single[0] is Route.CLOUD else "local_faster"
        slower = max(costs.local_ms, costs.cloud_ms)
        close = slower <= single[1] * (1.0 + cfg.handoff_band)
        if handoff and close and math.isfinite(costs.cloud_ms):
            best, reason = options[2], "handoff_faster"
    elif objective == "weighted":

        def score(o: tuple[Route, float, float, float]) -> float:
            return (
                o[1] + cfg.energy_weight_ms_per_j * o[2] + cfg.bytes_weight_ms_per_mb * o[3] / 1e6
            )

        best, reason = min(options, key=score), "least_cost"
    else:  # min_energy
        fastest = min(o[1] for o in options)
        budget = fastest * cfg.latency_budget_factor
        mean = cfg.latency_budget_scope == "mean" and math.isfinite(fastest)
        within = [o for o in options if o[1] <= budget]
        best = min(within, key=lambda o: (o[2], o[1]))
        if mean:
            strict = best
            for o in options:
                extra_ms = o[1] - strict[1]
                if not (budget < o[1] <= budget + credit_ms and o[2] < best[2]):
                    continue
                if strict[2] - o[2] >= saving_j_per_ms * extra_ms:
                    best = o
        reason = "least_energy"
        if mean:
            credit = max(0.0, credit_ms + budget - best[1])
    route, _, energy, _ = best
    hedge = costs.hedge_deadline_ms
    if objective == "latency":
        hedge = latency_hedge_ms(costs, overrun_ms)
    return Decision(
        route,
        reason,
        costs.local_ms,
        costs.cloud_ms,
        hedge if route is Route.CLOUD else None,
        handoff_ms=costs.handoff_ms if handoff else None,
        energy_j=energy,
        latency_credit_ms=credit,
    )
