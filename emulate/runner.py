"""Runner: one trace x policy through the real cloud service and the real edge agent.

The simulator's twin (``tandem.sim.runner.simulate``), measured instead of computed:

1. the workload is the simulator's (``make_draws``: same seed, same requests, same arrival
   times), each request given a real text of the same (language, tokens, steps)
   (``tandem.emulate.inputs``);
2. ``tandem cloud serve`` and ``tandem edge run`` start as child processes, joined by an
   emulated link (``tandem.emulate.links``: namespaces + tbf + relay, or the relay on
   loopback); the agent runs the real policy with the simulator's profiles, priors, probe
   interval and call deadline, and its estimators see the shaped link through their own probes
   and uploads;
3. a ``TraceShaper`` replays the trace into the link every 100 ms, trace time 0 on one of
   the agent's ping beats (the simulator's first probe is at trace time 0);
4. each request is sent through the agent's local API at its arrival time; its latency is
   arrival to the final event (last token), as in the simulator.

The result is a ``tandem.sim.runner.RunResult``, so ``tandem.sim.report`` summarizes and
writes it exactly as it does simulations.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.defaults import bundle_path
from tandem.edge.client import EdgeClient
from tandem.edge.probes import ping_beat
from tandem.emulate.inputs import InputMatch
from tandem.emulate.links import open_link
from tandem.emulate.trace_shaper import Partition, ShaperConfig, TraceShaper
from tandem.errors import ConfigError, TandemError
from tandem.policy import PolicyConfig
from tandem.sim.runner import SIM_POLICIES, Draws, RunResult, Scenario
from tandem.sim.trace import Trace

log = logging.getLogger(__name__)

EMU_POLICIES = tuple(p for p in SIM_POLICIES if p != "oracle")
"""The oracle knows the future; only the simulator can play it."""
TIMEOUT_REASONS = frozenset({"first_token_timeout", "cloud_unavailable", "stream_broken"})
"""Fallbacks that mean the cloud call ran out of time or broke (the simulator's ``timeout``)."""
REQUEST_SLACK_S = 30.0
"""How long past its call deadline a request may take before the run calls it lost."""


@dataclass(frozen=True)
class EmulationInfo:
    """How a run went, besides its per-request results."""

    mode: str
    requests: int
    answered: int
    errors: tuple[str, ...]
    bytes_up: int
    bytes_down: int
    connections: int
    ticks: int
    wall_s: float


def agent_config(
    workdir: Path,
    cloud_address: str,
    policy: str,
    cfg: PolicyConfig,
    scenario: Scenario,
    device_profile: Path,
    cloud_profile: Path,
    bundle: Path,
    network_type: str = "lte",
) -> dict[str, Any]:
    """The agent's ``edge.yaml`` mapping that makes it the simulator's agent.

    Same policy config (priors, hedging, codec), probe interval and timeout = the simulator's,
    the same radio (``network_type``: the trace's, else the scenario's),
    and a call that, like the simulator's, commits to the cloud until ``call_deadline_ms`` (a
    first-token timeout shorter than that would be a second, unsimulated deadline).
    """
    deadline_s = cfg.call_deadline_ms / 1000.0
    policy_dict = _plain(dataclasses.asdict(dataclasses.replace(cfg, policy=policy)))
    return {
        "bundle": str(bundle),
        "socket": str(workdir / "edge.sock"),
        "device_profile": str(device_profile),
        "cloud_profile": str(cloud_profile),
        "device_speed_factor": scenario.device_speed_factor,
        "network_type": network_type,
        "max_concurrent": 64,
        "policy": policy_dict,
        "cloud": {
            "addresses": [cloud_address],
            "deadline_s": deadline_s,
            "first_token_timeout_s": deadline_s,
            "ping_interval_s": scenario.probe_interval_s,
            "ping_timeout_s": scenario.probe_timeout_ms / 1000.0,
            "codec": cfg.codec,  # what the policy prices is what goes on the wire
        },
    }


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively: YAML's safe dumper writes only plain types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def run_emulation(
    trace: Trace,
    policy: str,
    draws: Draws,
    inputs: InputMatch,
    scenario: Scenario,
    cfg: PolicyConfig,
    device_profile: Path,
    cloud_profile: Path,
    mode: str,
    *,
    seed: int = 0,
    bundle: Path | None = None,
    partitions: tuple[Partition, ...] = (),
    workdir: Path | None = None,
    cloud_niceness: int = 0,
) -> tuple[RunResult, EmulationInfo]:
    """Play ``draws`` over ``trace`` under ``policy`` with the real daemons (see module doc);
    ``cloud_niceness``: how much lower the replica's CPU priority is than the agent's
    (``tandem.emulate.processes.CLOUD_NICENESS``)."""
    if policy not in EMU_POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose from {', '.join(EMU_POLICIES)}")
    requests = draws.workload.requests
    if len(inputs.texts) != len(requests):
        raise ConfigError(f"{len(inputs.texts)} input texts for {len(requests)} requests")
    bundle = bundle_path(bundle)
    link_cfg = scenario.link
    shaper_cfg = ShaperConfig(
        base_rtt_ms=link_cfg.base_rtt_ms,
        loss=link_cfg.loss_rate,
        rtt_jitter=link_cfg.rtt_jitter,
        partitions=partitions,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tandem-emulate-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        link = open_link(mode, seed)
        cloud = edge = None
        try:
            # The link follows the trace's first sample while the daemons start.
            shaper = TraceShaper(link, trace, shaper_cfg, rng=np.random.default_rng(seed))
            shaper.tick(0.0)
            shaper.t0 = None  # the replay proper starts on a ping beat (`_drive`)
            cloud = link.start_cloud(bundle, work, cloud_niceness)
            config = agent_config(
                work, link.cloud_address, policy, cfg, scenario, device_profile,
                cloud_profile, bundle, trace.network_type or scenario.network_type,
            )  # fmt: skip
            edge = link.start_edge(config, work)
            outcome = _drive(edge.socket, requests, inputs, shaper, cfg, scenario.probe_interval_s)
        finally:
            if edge is not None:
                edge.stop()
            if cloud is not None:
                cloud.stop()
            link.close()
        counters = link.relay.counters()
    latency, finals, errors = outcome["latency"], outcome["finals"], outcome["errors"]
    n = len(requests)
    cloud_arr = np.zeros(n, dtype=bool)
    fallback = np.zeros(n, dtype=bool)
    timeout = np.zeros(n, dtype=bool)
    reasons = []
    for i, final in enumerate(finals):
        if final is None:
            reasons.append("error")
            continue
        decided_cloud = final.route == "cloud" or bool(final.fallbacks)
        cloud_arr[i] = decided_cloud
        fallback[i] = decided_cloud and final.route == "local"
        timeout[i] = bool(TIMEOUT_REASONS & set(final.fallbacks))
        reasons.append(final.reason)
    went = int(cloud_arr.sum())
    bytes_up = np.where(cloud_arr, counters.bytes_up / went, 0.0) if went else np.zeros(n)
    result = RunResult(
        trace=trace.name,
        policy=policy,
        arrival_s=np.array([r.arrival_s for r in requests]),
        latency_ms=np.array(latency),
        cloud=cloud_arr,
        fallback=fallback,
        timeout=timeout,
        bytes_up=bytes_up,
        predicted_local_ms=np.full(n, math.nan),
        predicted_cloud_ms=np.full(n, math.nan),
        reasons=tuple(reasons),
    )
    info = EmulationInfo(
        mode=link.mode,
        requests=n,
        answered=sum(f is not None for f in finals),
        errors=tuple(errors),
        bytes_up=counters.bytes_up,
        bytes_down=counters.bytes_down,
        connections=counters.connections,
        ticks=shaper.ticks,
        wall_s=round(time.monotonic() - started, 2),
    )
    return result, info


def _drive(
    socket_path: str, requests, inputs: InputMatch, shaper: TraceShaper, cfg, ping_interval_s
) -> dict:
    """Send every request at its arrival time; the trace starts on one of the agent's ping
    beats (``edge.probes.ping_beat``), as the simulator's probes start at trace time 0. Off
    the beat, the agent and the simulator would see an outage begin up to one ping interval
    apart, and route the requests at its edges differently."""
    n = len(requests)
    latency = [math.nan] * n
    finals: list[Any] = [None] * n
    errors: list[str] = []
    lock = threading.Lock()
    limit_s = cfg.call_deadline_ms / 1000.0 + REQUEST_SLACK_S

    def one(i: int, due: float, client: EdgeClient) -> None:
        req = requests[i]
        try:
            for event in client.stream(inputs.texts[i], req.lang, local_only=req.local_only):
                if event.WhichOneof("event") == "final":
                    latency[i] = (time.monotonic() - due) * 1000.0
                    finals[i] = event.final
        except TandemError as exc:
            with lock:
                errors.append(f"request {i}: {exc}")
        if finals[i] is None:
            latency[i] = (time.monotonic() - due) * 1000.0

    t0 = ping_beat(time.monotonic(), ping_interval_s) * ping_interval_s
    time.sleep(max(0.0, t0 - time.monotonic()))
    shaper.t0 = t0  # the shaper's first tick then finds trace time 0 here, not at its start
    with (
        EdgeClient(socket_path, timeout_s=limit_s) as client,
        ThreadPoolExecutor(max_workers=64, thread_name_prefix="emu-request") as pool,
        shaper,
    ):
        futures = []
        for i, req in enumerate(requests):
            due = t0 + req.arrival_s
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            futures.append(pool.submit(one, i, due, client))
        for future in futures:
            future.result()
    return {"latency": latency, "finals": finals, "errors": errors}


__all__ = ["EMU_POLICIES", "EmulationInfo", "agent_config", "run_emulation"]
