"""Runner: replay one workload over one trace under one policy, the way a real agent would.

For each request, in arrival order:

1. the device runs the encoder (waiting for a free compute lane) and times it — the ratio to
   the profile's encoder time is the agent's reading of the current CPU load;
2. everything the agent would have *measured by then* is fed to its
   ``tandem.policy.knowledge.AgentKnowledge`` — probes leaving and returning, calls turning
   late, failing or completing, finished requests' lengths, each at the instant the agent
   learns it; never the trace. The edge agent drives the same object with the same events,
   so the two learn by one set of rules;
3. ``tandem.policy.decide`` routes it — the very function the edge agent calls;
4. the route is played out on the link model and the device: LOCAL decodes on the device at
   its current load; CLOUD uploads, waits, decodes and streams back; a hedge deadline starts
   local decoding if no token came in time (first to finish wins); the call deadline cuts a
   late call and resumes locally from the tokens received.

The oracle plays both routes for each request with full knowledge and keeps the faster one
(it still honours ``local_only`` and the byte budget).

Common random numbers: one seed draws the workload, per-request RTT jitter, loss draws, cloud
queue waits, the device load series and probe jitter, once; every trace and every policy
replays those same draws. Results are therefore reproducible bit for bit and differences
between policies are not noise from different requests.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from tandem.errors import ConfigError
from tandem.policy import (
    PolicyConfig,
    Profile,
    Route,
    decide,
    payload_bytes,
)
from tandem.policy.energy import RADIOS, RadioState, compute_j, transfer_j
from tandem.policy.knowledge import (
    AgentKnowledge,
    ProbeResult,
    ProbeSent,
    RadioUsed,
    RequestDone,
    RequestSettled,
)
from tandem.sim.device import Device
from tandem.sim.handoff import play_handoff
from tandem.sim.link import LinkConfig, cloud_call, loses_packet, probe_rtt_ms, rtt_ms_at
from tandem.sim.load import LOAD_KINDS, LoadSeries, make_load
from tandem.sim.senses import Senses, learn_call
from tandem.sim.trace import Trace
from tandem.sim.workload import Workload, make_workload

log = logging.getLogger(__name__)

SIM_POLICIES: tuple[str, ...] = (
    "always_local",
    "always_cloud",
    "threshold",
    "cost_model",
    "handoff",
    "oracle",
)

DEVICE_SPEED_FACTOR = 5.0
"""Default device-speed factor: a mid-range phone's CPU takes ~5x a server core's time per
decoder step (rationale and sources in ``docs/simulation.md``, "The simulated world (default
scenario)")."""


@dataclass(frozen=True)
class Scenario:
    """Everything about the simulated world that is not the trace or the policy."""

    device_speed_factor: float = DEVICE_SPEED_FACTOR
    """Device profile times are multiplied by this (the device is this much slower)."""
    device_lanes: int = 2
    """Inference runs the device can do at once at full speed (one per big-core cluster)."""
    load: str = "bursty"
    """Device load kind: idle, busy or bursty (see ``sim/load.py``)."""
    rate_per_s: float = 0.5
    """Poisson arrival rate of requests."""
    cloud_batch: int = 4
    """Sequences the cloud decodes together: a moderately loaded server."""
    cloud_queue_ms: float = 5.0
    """Mean wait in the cloud's queue (exponential); reported to the agent as its mean."""
    probe_interval_s: float = 2.0
    """The agent pings the cloud this often (RTT and reachability)."""
    probe_timeout_ms: float = 1000.0
    local_only_share: float = 0.0
    """Fraction of requests flagged ``local_only`` (privacy)."""
    byte_budget: float | None = None
    """Bytes the metered network may carry over the whole run; None: not metered."""
    network_type: str = "lte"
    """Radio of a trace whose collection does not say (no ``family`` in its index.csv)."""
    link: LinkConfig = field(default_factory=LinkConfig)

    def __post_init__(self) -> None:
        if self.network_type not in RADIOS:
            raise ConfigError(
                f"network type must be one of {', '.join(sorted(RADIOS))}, "
                f"got {self.network_type!r}"
            )
        if not self.device_speed_factor > 0:
            raise ConfigError(f"device-speed factor must be > 0, got {self.device_speed_factor}")
        if self.device_lanes < 1:
            raise ConfigError(f"device_lanes must be >= 1, got {self.device_lanes}")
        if self.load not in LOAD_KINDS:
            raise ConfigError(f"load must be one of {list(LOAD_KINDS)}, got {self.load!r}")
        if self.cloud_batch < 1:
            raise ConfigError(f"cloud_batch must be >= 1, got {self.cloud_batch}")
        if not self.cloud_queue_ms >= 0:
            raise ConfigError(f"cloud_queue_ms must be >= 0, got {self.cloud_queue_ms}")
        if not self.probe_interval_s > 0:
            raise ConfigError(f"probe_interval_s must be > 0, got {self.probe_interval_s}")


@dataclass(frozen=True)
class Draws:
    """The random numbers of one run, drawn once and shared by every trace and policy."""

    workload: Workload
    load: LoadSeries
    rtt_jitter: np.ndarray  # (n,) float64, log-normal factors
    loss_uniform: np.ndarray  # (n,) float64, U(0,1)
    queue_ms: np.ndarray  # (n,) float64, cloud queue waits
    probe_jitter: np.ndarray  # (probes,) float64
    end_s: float
    """Time covered by the run: last arrival plus a margin for the last requests to finish."""


def make_draws(n_requests: int, scenario: Scenario, seed: int, workload_maker=None) -> Draws:
    """``workload_maker``: ``make_workload`` (text, the default) or another of its shape, such
    as ``SpeechWorkload.maker()`` (sim/speech.py)."""
    rng = np.random.default_rng(seed)
    maker = workload_maker or make_workload
    workload = maker(n_requests, scenario.rate_per_s, rng, scenario.local_only_share)
    n = len(workload.requests)
    sigma = scenario.link.rtt_jitter
    rtt_jitter = rng.lognormal(0.0, sigma, size=n) if sigma > 0 else np.ones(n)
    loss_uniform = rng.random(n)
    queue_ms = (
        rng.exponential(scenario.cloud_queue_ms, size=n) if scenario.cloud_queue_ms else np.zeros(n)
    )
    end_s = workload.requests[-1].arrival_s + 60.0
    load = make_load(scenario.load, end_s, rng)
    probes = int(end_s / scenario.probe_interval_s) + 1
    probe_jitter = rng.lognormal(0.0, sigma, size=probes) if sigma > 0 else np.ones(probes)
    return Draws(workload, load, rtt_jitter, loss_uniform, queue_ms, probe_jitter, end_s)


@dataclass(frozen=True)
class RunResult:
    """Per-request outcome of one trace x policy run (arrays indexed by request)."""

    trace: str
    policy: str
    arrival_s: np.ndarray  # (n,) float64
    latency_ms: np.ndarray  # (n,) float64, arrival to last token
    cloud: np.ndarray  # (n,) bool, decided CLOUD, or a HANDOFF that switched to the cloud
    fallback: np.ndarray  # (n,) bool, decided CLOUD but finished by local decoding
    timeout: np.ndarray  # (n,) bool, the cloud call hit its deadline
    bytes_up: np.ndarray  # (n,) float64, request bytes that went up the link
    predicted_local_ms: np.ndarray  # (n,) float64, decision to last token; oracle: actual
    predicted_cloud_ms: np.ndarray  # (n,) float64, idem for the cloud route
    reasons: tuple[str, ...]  # decision reason per request
    compute_j: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) float64
    """Device compute energy: power_w x the wall time the request's ONNX runs kept a lane busy."""
    radio_j: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) float64
    """Radio energy the request's cloud call added (``policy.energy.transfer_j``)."""
    network_type: str = "lte"

    @property
    def energy_j(self) -> np.ndarray:  # (n,) float64
        return self.compute_j + self.radio_j


def _probe_events(trace: Trace, scenario: Scenario, draws: Draws) -> list[ProbeSent | ProbeResult]:
    """Every probe leaving and returning (``rtt_ms`` None: it timed out), in time order; the
    same for every policy."""
    events: list[ProbeSent | ProbeResult] = []
    timeout = scenario.probe_timeout_ms
    for k, jitter in enumerate(draws.probe_jitter):
        t = k * scenario.probe_interval_s
        rtt = probe_rtt_ms(trace, scenario.link, t, float(jitter))
        events.append(ProbeSent(t))
        if rtt <= timeout:
            events.append(ProbeResult(t + rtt / 1000.0, rtt))
        else:
            events.append(ProbeResult(t + timeout / 1000.0, None))
    events.sort(key=lambda e: e.t_s)
    return events


def simulate(
    trace: Trace,
    policy: str,
    draws: Draws,
    scenario: Scenario,
    device: Profile,
    cloud: Profile,
    cfg: PolicyConfig,
) -> RunResult:
    """Replay ``draws`` over ``trace`` under ``policy`` (one of ``SIM_POLICIES``).

    ``device`` is the profile already scaled by the device-speed factor; ``cfg.policy`` is
    overridden by ``policy``.
    """
    if policy not in SIM_POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose from {', '.join(SIM_POLICIES)}")
    oracle = policy == "oracle"
    if not oracle and cfg.policy != policy:
        cfg = dataclasses.replace(cfg, policy=policy)
    requests = draws.workload.requests
    n = len(requests)
    link = scenario.link
    dev = Device(device, draws.load, scenario.device_lanes)
    latency = np.zeros(n)
    went_cloud = np.zeros(n, dtype=bool)
    fell_back = np.zeros(n, dtype=bool)
    timed_out = np.zeros(n, dtype=bool)
    sent = np.zeros(n)
    pred_local = np.zeros(n)
    pred_cloud = np.full(n, math.inf)
    reasons: list[str] = []
    busy_ms = np.zeros(n)
    radio_j = np.zeros(n)
    network_type = trace.network_type or scenario.network_type
    radio = RADIOS[network_type]
    radio_state = RadioState()  # the ledger: what the radio really spent, request by request

    def book(i: int, start_s: float, end_s: float, lane: int) -> None:
        dev.book(start_s, end_s, lane)
        busy_ms[i] += max(0.0, end_s - start_s) * 1000.0

    senses = Senses(
        AgentKnowledge(
            cfg,
            device,
            cloud_batch=scenario.cloud_batch,
            cloud_queue_ms=scenario.cloud_queue_ms,
            network_type=network_type,
        ),
        _probe_events(trace, scenario, draws) if not oracle else [],
    )
    knowledge = senses.knowledge
    budget_left = scenario.byte_budget
    deadline_s = cfg.call_deadline_ms / 1000.0

    for i, req in enumerate(requests):
        dev.forget_before(req.arrival_s)
        t_e, encoder_ms = dev.encode(req.arrival_s, req.src_len)
        busy_ms[i] = encoder_ms

        senses.catch_up(t_e)  # what the agent knows at t_e

        nbytes = payload_bytes(
            req.src_len, device.hidden_size, cfg.codec, cfg.payload_overhead_bytes
        )
        # The cloud call's timeline if it were made now; what happens is decided below.
        rtt = rtt_ms_at(trace, link, t_e, float(draws.rtt_jitter[i]))
        lost = loses_packet(nbytes, link, float(draws.loss_uniform[i]))
        tl = cloud_call(
            trace,
            link,
            t_e,
            nbytes,
            req.steps,
            rtt_ms=rtt,
            lost=lost,
            cloud_wait_ms=float(draws.queue_ms[i])
            + cloud.request_overhead_ms
            + cloud.encoder_ms(req.src_len),
            cloud_decode_ms=cloud.decode_ms(req.steps, scenario.cloud_batch),
            token_bytes=cfg.token_bytes,
        )

        if oracle:
            local_end = dev.decode_slot(t_e, req.steps)[1]
            route, hedge, reason = Route.LOCAL, None, "local_faster"
            pred_local[i] = (local_end - t_e) * 1000.0
            if req.local_only:
                reason = "local_only"
            elif budget_left is not None and nbytes > budget_left:
                reason = "byte_budget"
            else:
                cloud_end = _cloud_only_end(tl, t_e, deadline_s, dev, req.steps, trace)
                pred_cloud[i] = (cloud_end - t_e) * 1000.0
                if cloud_end < local_end:
                    route, reason = Route.CLOUD, "cloud_faster"
            reasons.append(reason)
        else:
            obs = knowledge.observations(
                t_e,
                req.src_len,
                req.lang,
                encoder_ms,
                local_only=req.local_only,
                local_backlog_ms=(dev.free_from(t_e) - t_e) * 1000.0,
                byte_budget_left=budget_left,
            )
            decision = decide(obs, device, cloud, cfg, knowledge.policy_state)
            knowledge.decided(decision)
            pred_local[i], pred_cloud[i] = decision.local_ms, decision.cloud_ms
            reasons.append(decision.reason)
            route, hedge = decision.route, decision.hedge_deadline_ms

        # -- play it out ---------------------------------------------------------------------
        call = None  # (start, end, up bytes, down bytes) of the radio's use
        if route is Route.LOCAL:
            start, finish, lane = dev.decode_slot(t_e, req.steps)
            book(i, start, finish, lane)
        elif route is Route.HANDOFF:
            ho = play_handoff(
                trace,
                dev,
                cloud,
                cfg,
                scenario.cloud_batch,
                scenario.cloud_queue_ms,
                req.src_len,
                req.steps,
                t_e,
                nbytes,
                rtt_ms=rtt,
                lost=lost,
                queue_ms=float(draws.queue_ms[i]),
                book=lambda a, b, lane, i=i: book(i, a, b, lane),
            )
            finish = ho.finish_s
            # As the agent counts it: the cloud's (streamed in part or whole) once switched to;
            # a race the local side won is a local answer, whatever was uploaded.
            went_cloud[i] = ho.switched
            fell_back[i], timed_out[i] = ho.resumed, ho.timed_out
            sent[i] = ho.up_bytes
            if budget_left is not None:
                budget_left -= sent[i]
            call = (t_e, ho.call_end_s, ho.up_bytes, ho.down_bytes)
            for event in ho.learnt:
                senses.later(event)
        else:
            went_cloud[i] = True
            deadline = t_e + deadline_s
            done = tl.last_token_s if tl.last_token_s <= deadline else math.inf
            t_hedge = t_e + hedge / 1000.0 if hedge is not None else math.inf
            hedged = not (tl.first_token_s <= t_hedge or t_hedge >= deadline)
            if not hedged:
                # Committed to the cloud (or the hedge would come after the deadline anyway).
                if done < math.inf:
                    finish, abandon, late = done, done, None
                else:
                    timed_out[i] = fell_back[i] = True
                    k = tl.tokens_by(trace, deadline)
                    start, finish, lane = dev.decode_slot(deadline, req.steps, prefix=k)
                    book(i, start, finish, lane)
                    abandon = late = deadline
            else:
                late = t_hedge
                start, local_end, lane = dev.decode_slot(t_hedge, req.steps)
                if done < local_end:
                    finish, abandon = done, done
                else:
                    finish = local_end
                    fell_back[i] = True
                    abandon = min(local_end, deadline)
                    timed_out[i] = deadline < local_end
                book(i, start, max(start, finish), lane)
            sent[i] = tl.bytes_up_by(trace, abandon, nbytes)
            call = (t_e, abandon, sent[i], tl.tokens_by(trace, abandon) * cfg.token_bytes)
            if budget_left is not None:
                budget_left -= sent[i]
            if not oracle:
                learn_call(
                    senses.later,
                    tl,
                    t_e,
                    nbytes,
                    late,
                    abandon,
                    done,
                    scenario.cloud_queue_ms,
                    hedged=hedged,
                )
        # The device's fixed per-request cost (its local API, tokenization) is paid whichever
        # route serves the request, outside the compute lanes.
        latency[i] = (finish - req.arrival_s) * 1000.0 + device.request_overhead_ms
        if call is not None:
            radio_j[i], radio_state = transfer_j(radio, radio_state, *call)
        if not oracle:
            if call is not None:
                start_s, end_s, up, down = call
                senses.later(RadioUsed(end_s, start_s, up, down))
            senses.later(RequestDone(finish, req.lang, req.src_len, req.steps))
            senses.later(RequestSettled.of(finish, t_e, decision))

    return RunResult(
        trace=trace.name,
        policy=policy,
        arrival_s=np.array([r.arrival_s for r in requests]),
        latency_ms=latency,
        cloud=went_cloud,
        fallback=fell_back,
        timeout=timed_out,
        bytes_up=sent,
        predicted_local_ms=pred_local,
        predicted_cloud_ms=pred_cloud,
        reasons=tuple(reasons),
        compute_j=np.array([compute_j(device.power_w, ms) for ms in busy_ms]),
        radio_j=radio_j,
        network_type=network_type,
    )


def _cloud_only_end(
    tl, t_e: float, deadline_s: float, dev: Device, steps: int, trace: Trace
) -> float:
    """Completion of a CLOUD route without hedge: the call, or its deadline-cut fallback."""
    deadline = t_e + deadline_s
    if tl.last_token_s <= deadline:
        return tl.last_token_s
    return dev.decode_slot(deadline, steps, prefix=tl.tokens_by(trace, deadline))[1]


def run_experiment(
    traces: list[Trace],
    policies: list[str],
    n_requests: int,
    seed: int,
    scenario: Scenario,
    device: Profile,
    cloud: Profile,
    cfg: PolicyConfig,
    progress=None,
    workload_maker=None,
) -> tuple[Draws, list[RunResult], dict[str, RunResult]]:
    """Every trace x policy, plus the oracle of each trace (for regret) even if not asked for.

    Returns the shared draws, the requested runs in trace-then-policy order, and the oracle
    run per trace. ``device`` is the unscaled device profile; the scenario's device-speed
    factor is applied here. ``progress(done, total, label)`` is called after each run;
    ``workload_maker`` is ``make_draws``'s (None: the text workload).
    """
    unknown = [p for p in policies if p not in SIM_POLICIES]
    if unknown:
        raise ConfigError(f"unknown policies {unknown}; choose from {', '.join(SIM_POLICIES)}")
    draws = make_draws(n_requests, scenario, seed, workload_maker)
    slow_device = device.scaled(scenario.device_speed_factor)
    total = len(traces) * (len(policies) + (0 if "oracle" in policies else 1))
    done = 0
    results: list[RunResult] = []
    oracles: dict[str, RunResult] = {}
    for trace in traces:
        oracle = simulate(trace, "oracle", draws, scenario, slow_device, cloud, cfg)
        oracles[trace.name] = oracle
        done += 1
        if progress:
            progress(done, total, f"{trace.name} oracle")
        for policy in policies:
            if policy == "oracle":
                results.append(oracle)
                continue
            results.append(simulate(trace, policy, draws, scenario, slow_device, cloud, cfg))
            done += 1
            if progress:
                progress(done, total, f"{trace.name} {policy}")
    return draws, results, oracles
