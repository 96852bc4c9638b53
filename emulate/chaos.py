"""The chaos scenario: many requests through the real agent while the cloud and the link fail.

What it answers: "what happens to my requests when the cloud crashes, the link drops, or
latency spikes?" — with the daemons users run. The cloud service (``tandem cloud serve``) and
the edge agent (``tandem edge run``) are child processes; the agent reaches the cloud through a
``ShapingRelay``; apps are client threads on the agent's Unix socket. At seeded moments the
cloud is SIGKILLed (then restarted on the same port), the link is partitioned (100 % loss,
bytes held) or its delay spikes. Every request is sent exactly once, and its stream is checked:
exactly one final event, token indices contiguous from 0 (no repeat, no gap), and the output
identical to a local reference decode of the same input. By default half the clients talk
to a second agent that routes every request by HANDOFF (``ChaosConfig.handoff``), so the
faults meet Decode and Handoff calls alike.

The plan (``plan_faults``) and the verdicts (``check_stream``, ``summarize``) are pure; only
``run_chaos`` and its helpers touch processes, sockets and clocks.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tandem.defaults import bundle_path
from tandem.edge.client import EdgeClient
from tandem.emulate.inputs import sample_inputs
from tandem.emulate.processes import CloudProcess, EdgeProcess, free_port
from tandem.emulate.relay import ShapingRelay
from tandem.emulate.shaping import LinkState
from tandem.errors import ConfigError, TandemError
from tandem.runtime.seq2seq import Seq2Seq

log = logging.getLogger(__name__)

FAULT_KINDS = ("kill", "partition", "spike")


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run. Defaults are the CI scenario (``tests/chaos``, ``tandem chaos``)."""

    requests: int = 1000
    """Requests sent, each exactly once."""
    seed: int = 0
    """Seeds the inputs and the fault plan: a run is reproducible up to thread timing."""
    clients: int = 4
    """App threads sending requests concurrently (each one request at a time)."""
    rate_per_s: float = 30.0
    """Requests are sent on a fixed schedule at this rate (a client that falls behind sends at
    once), so the run lasts long enough for the faults to meet traffic: unpaced, outages
    answered locally would race through the requests while the cloud restarts. 0: unpaced."""
    cloud_kills: int = 3
    """SIGKILLs of the cloud process, each followed by a restart on the same port."""
    partitions: int = 3
    """Periods of 100 % loss on the link (bytes held, connections kept)."""
    spikes: int = 4
    """Periods of extra one-way delay on the link."""
    down_s: tuple[float, float] = (0.5, 2.0)
    """How long a killed cloud stays dead before its restart begins (uniform range)."""
    partition_s: tuple[float, float] = (0.5, 3.0)
    """Length of a partition (uniform range)."""
    spike_s: tuple[float, float] = (0.5, 2.0)
    """Length of a latency spike (uniform range)."""
    spike_delay_ms: tuple[float, float] = (100.0, 800.0)
    """Extra one-way delay during a spike (uniform range)."""
    base_delay_ms: float = 1.0
    """One-way delay of the link outside spikes."""
    first_fault_at: float = 0.05
    last_fault_at: float = 0.85
    """Faults start while this fraction of the requests has been sent (so each hits traffic)."""
    policy: str = "always_cloud"
    """The agent's policy: always_cloud sends every request it can to the cloud, so every
    fault meets requests in flight; offline or an open breaker still routes locally."""
    handoff: bool = True
    """Half the clients (the odd ones) talk to a second agent whose requests all go by
    HANDOFF (``cloud.force_route: handoff``), so every fault also meets Handoff calls in
    flight — mid-upload, waiting for a prefix, or after the switch to the cloud's stream."""
    codec: str = "int8+zstd"
    """Hidden-state codec on the wire (the agent's default)."""
    request_timeout_s: float = 60.0
    """An app's deadline per request; a request not answered by then counts as lost."""
    bundle: str | None = None
    """Model bundle (default: the shipped model)."""

    def __post_init__(self) -> None:
        def positive_int(name: str, low: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"chaos: {name} must be an integer >= {low}, got {value!r}")

        positive_int("requests", 1)
        positive_int("clients", 1)
        for name in ("cloud_kills", "partitions", "spikes"):
            positive_int(name, 0)
        for name in ("down_s", "partition_s", "spike_s", "spike_delay_ms"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise ConfigError(
                    f"chaos: {name} must be a range 0 <= low <= high, got {low, high}"
                )
        if not 0 <= self.first_fault_at <= self.last_fault_at <= 1:
            raise ConfigError("chaos: need 0 <= first_fault_at <= last_fault_at <= 1")
        if not (math.isfinite(self.base_delay_ms) and self.base_delay_ms >= 0):
            raise ConfigError(f"chaos: base_delay_ms must be >= 0, got {self.base_delay_ms}")
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s >= 0):
            raise ConfigError(f"chaos: rate_per_s must be >= 0, got {self.rate_per_s}")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"chaos: request_timeout_s must be > 0, got {self.request_timeout_s}")


# -- the plan (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected failure: starts when the first piece of request ``at_request`` arrives (or
    when it ends, if it streams none) and lasts ``duration_s``. Starting mid-stream is the
    hard case: the cut request must resume from the tokens it already has."""

    kind: str
    """``kill`` (cloud SIGKILLed, restarted after duration_s), ``partition`` or ``spike``."""
    at_request: int
    duration_s: float
    delay_ms: float = 0.0
    """Spikes only: extra one-way delay."""


def plan_faults(cfg: ChaosConfig) -> tuple[Fault, ...]:
    """The seeded fault plan, ordered by the request that starts each fault."""
    rng = np.random.default_rng([cfg.seed, 0xC4A05])
    low = int(cfg.first_fault_at * cfg.requests)
    high = max(int(cfg.last_fault_at * cfg.requests), low + 1)
    ranges = {"kill": cfg.down_s, "partition": cfg.partition_s, "spike": cfg.spike_s}
    faults = []
    for kind, count in zip(FAULT_KINDS, (cfg.cloud_kills, cfg.partitions, cfg.spikes), strict=True):
        for _ in range(count):
            duration = float(rng.uniform(*ranges[kind]))
            delay = float(rng.uniform(*cfg.spike_delay_ms)) if kind == "spike" else 0.0
            faults.append(Fault(kind, int(rng.integers(low, high)), round(duration, 3), delay))
    return tuple(sorted(faults, key=lambda f: (f.at_request, f.kind)))


# -- the verdicts (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class FinalSeen:
    """A final event as the app received it."""

    ids: tuple[int, ...]
    text: str
    route: str
    reason: str
    fallbacks: tuple[str, ...]


@dataclass
class StreamRecord:
    """Everything one app request saw, in order; filled by the client thread."""

    index: int
    pieces: list[tuple[int, tuple[int, ...], str]] = field(default_factory=list)
    """(start, ids, text) of each piece, as received."""
    finals: list[FinalSeen] = field(default_factory=list)
    events_after_final: int = 0
    error: str = ""
    """The status that ended the stream, if not OK."""


@dataclass(frozen=True)
class Verdict:
    answered: bool
    """Exactly one final event arrived (possibly with other problems, flagged below)."""
    lost: bool
    """No final event: an error status, or a stream that ended without one."""
    duplicated: bool
    """A token index repeated, a second final event, or anything after the final event."""
    gap: bool
    """A token index skipped."""
    mismatched: bool
    """The answer differs from the local reference, or from the pieces streamed before it."""


def check_stream(record: StreamRecord, want_ids: tuple[int, ...], want_text: str) -> Verdict:
    """Judge one request's stream against edge.proto's contract and the reference output."""
    ids: list[int] = []
    texts: list[str] = []
    duplicated = gap = False
    for start, piece_ids, text in record.pieces:
        if start < len(ids):
            duplicated = True
        elif start > len(ids):
            gap = True
        ids.extend(piece_ids)
        texts.append(text)
    duplicated = duplicated or len(record.finals) > 1 or record.events_after_final > 0
    if not record.finals:
        return Verdict(False, True, duplicated, gap, False)
    final = record.finals[0]
    mismatched = (
        final.ids != want_ids
        or final.text != want_text
        or tuple(ids) != final.ids
        or "".join(texts) != final.text
    )
    return Verdict(True, False, duplicated, gap, mismatched)


@dataclass(frozen=True)
class ChaosSummary:
    """The outcome of a run; ``as_dict`` is the JSON line ``tandem chaos`` ends with."""

    requests: int
    answered: int
    lost: int
    duplicated: int
    gaps: int
    mismatched: int
    cloud_kills: int
    partitions: int
    spikes: int
    routes: dict[str, int]
    fallbacks: dict[str, int]
    wall_s: float
    seed: int
    handoffs: int = 0
    """Answers of requests routed HANDOFF (reason ``forced_handoff``)."""
    failures: tuple[str, ...] = ()
    """One line per bad request (index, what was wrong), for the report; at most 20."""

    @property
    def ok(self) -> bool:
        return (
            self.answered == self.requests
            and self.lost == self.duplicated == self.gaps == self.mismatched == 0
        )

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "answered": self.answered,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "gaps": self.gaps,
            "mismatched": self.mismatched,
            "cloud_kills": self.cloud_kills,
            "partitions": self.partitions,
            "spikes": self.spikes,
            "routes": dict(sorted(self.routes.items())),
            "fallbacks": dict(sorted(self.fallbacks.items())),
            "handoffs": self.handoffs,
            "wall_s": round(self.wall_s, 1),
            "seed": self.seed,
            "ok": self.ok,
        }


def summarize(
    records: list[StreamRecord],
    expected: list[tuple[tuple[int, ...], str]],
    fired: Counter,
    wall_s: float,
    seed: int,
) -> ChaosSummary:
    """Verdicts of every record against its expected (ids, text), counted."""
    counts: Counter = Counter()
    routes: Counter = Counter()
    fallbacks: Counter = Counter()
    failures = []
    for record, (want_ids, want_text) in zip(records, expected, strict=True):
        verdict = check_stream(record, want_ids, want_text)
        for name in ("answered", "lost", "duplicated", "gap", "mismatched"):
            counts[name] += getattr(verdict, name)
        if record.finals:
            routes[record.finals[0].route] += 1
            fallbacks.update(record.finals[0].fallbacks)
            counts["handoffs"] += record.finals[0].reason == "forced_handoff"
        bad = [n for n in ("lost", "duplicated", "gap", "mismatched") if getattr(verdict, n)]
        if bad and len(failures) < 20:
            failures.append(f"request {record.index}: {', '.join(bad)} {record.error}".strip())
    return ChaosSummary(
        requests=len(records),
        answered=counts["answered"],
        lost=counts["lost"],
        duplicated=counts["duplicated"],
        gaps=counts["gap"],
        mismatched=counts["mismatched"],
        cloud_kills=fired["kill"],
        partitions=fired["partition"],
        spikes=fired["spike"],
        routes=dict(routes),
        fallbacks=dict(fallbacks),
        wall_s=wall_s,
        seed=seed,
        handoffs=counts["handoffs"],
        failures=tuple(failures),
    )


# -- the run (I/O) -----------------------------------------------------------------------------


class _Link:
    """The relay's state as the overlap of the faults active now (partitions and spikes)."""

    def __init__(self, relay: ShapingRelay, base_delay_ms: float) -> None:
        self.relay, self.base_delay_ms = relay, base_delay_ms
        self._lock = threading.Lock()
        self._partitions = 0
        self._spikes: list[float] = []

    def _apply(self) -> None:
        delay = self.base_delay_ms + max(self._spikes, default=0.0)
        self.relay.set_state(LinkState(delay_ms=delay, partitioned=self._partitions > 0))

    def partition(self, on: bool) -> None:
        with self._lock:
            self._partitions += 1 if on else -1
            self._apply()

    def spike(self, delay_ms: float, on: bool) -> None:
        with self._lock:
            if on:
                self._spikes.append(delay_ms)
            else:
                self._spikes.remove(delay_ms)
            self._apply()


class _Injector:
    """Fires each fault when its request is sent; every fault runs in a thread of its own."""

    def __init__(
        self, faults: tuple[Fault, ...], cloud: CloudProcess, link: _Link, say: Callable
    ) -> None:
        self._pending = list(faults)
        self._cloud, self._link, self._say = cloud, link, say
        self._lock = threading.Lock()
        self._cloud_lock = threading.Lock()  # one kill/restart cycle at a time
        self._threads: list[threading.Thread] = []
        self.fired: Counter = Counter()
        self.errors: list[str] = []
        self._t0 = time.monotonic()

    def reached(self, index: int) -> None:
        """Request ``index`` is streaming (or done): fire the faults due by then."""
        with self._lock:
            due = [f for f in self._pending if f.at_request <= index]
            self._pending = [f for f in self._pending if f.at_request > index]
        for fault in due:
            thread = threading.Thread(target=self._run, args=(fault,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, fault: Fault) -> None:
        try:
            if fault.kind == "kill":
                with self._cloud_lock:
                    self._cloud.kill()
                    self._count(fault, f"cloud SIGKILLed, down {fault.duration_s:.1f} s")
                    time.sleep(fault.duration_s)
                    self._cloud.start()
                    self._say(f"t={self._elapsed():5.1f}s cloud restarted and healthy")
            elif fault.kind == "partition":
                self._link.partition(True)
                self._count(fault, f"link partitioned for {fault.duration_s:.1f} s")
                time.sleep(fault.duration_s)
                self._link.partition(False)
            else:
                self._link.spike(fault.delay_ms, True)
                self._count(
                    fault, f"latency +{fault.delay_ms:.0f} ms one-way for {fault.duration_s:.1f} s"
                )
                time.sleep(fault.duration_s)
                self._link.spike(fault.delay_ms, False)
        except Exception as exc:  # surfaced in the summary: a harness failure fails the run
            log.exception("fault injection failed", extra={"fault": fault.kind})
            self.errors.append(f"{fault.kind} at request {fault.at_request}: {exc}")

    def _count(self, fault: Fault, what: str) -> None:
        with self._lock:
            self.fired[fault.kind] += 1
        self._say(f"t={self._elapsed():5.1f}s request {fault.at_request}: {what}")

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    def finish(self) -> None:
        """Fire what is left (a run shorter than planned) and wait for every fault to end."""
        self.reached(1 << 62)
        for thread in self._threads:
            thread.join()


def edge_yaml(
    cfg: ChaosConfig, bundle: Path, socket: Path, cloud_address: str, handoff: bool = False
) -> dict:
    """The agent's configuration: reacts within about a second to a dead or silent cloud;
    ``handoff``: every request it can send to the cloud goes by HANDOFF."""
    config = {
        "bundle": str(bundle),
        "socket": str(socket),
        "max_concurrent": max(cfg.clients, 1),
        "piece_interval_ms": 0,  # a piece per token: every index is checked, none coalesced
        "policy": {"policy": cfg.policy},
        "cloud": {
            "addresses": [cloud_address],
            "codec": cfg.codec,
            "deadline_s": 5.0,
            "first_token_timeout_s": 1.0,
            "ping_interval_s": 0.5,
            "keepalive_s": 2.0,
            "breaker": {"failure_threshold": 2, "reset_timeout_s": 1.0},
        },
    }
    if handoff:
        config["cloud"]["force_route"] = "handoff"
    return config


def _ask(
    client: EdgeClient,
    text: str,
    target: str | None,
    record: StreamRecord,
    request_id: str,
    on_stream: Callable[[], None],
) -> None:
    """Send one request once and record what comes back; ``on_stream`` at the first piece."""
    try:
        for event in client.stream(text, target, request_id=request_id):
            if record.finals:
                record.events_after_final += 1
            if event.WhichOneof("event") == "piece":
                p = event.piece
                if not record.pieces:
                    on_stream()
                record.pieces.append((p.start, tuple(p.ids), p.text))
            else:
                f = event.final
                record.finals.append(
                    FinalSeen(tuple(f.ids), f.text, f.route, f.reason, tuple(f.fallbacks))
                )
    except TandemError as exc:
        record.error = str(exc)


def run_chaos(
    cfg: ChaosConfig,
    workdir: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> ChaosSummary:
    """Run the scenario; daemons' logs go to ``workdir`` (a temporary directory if None)."""
    say = say or (lambda _msg: None)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="tandem-chaos-") as tmp:
            return run_chaos(cfg, Path(tmp), say)
    workdir.mkdir(parents=True, exist_ok=True)
    path = bundle_path(cfg.bundle)
    reference = Seq2Seq.load(path)
    inputs = sample_inputs(cfg.requests, sorted(reference.manifest.languages), cfg.seed)
    eos = reference.manifest.tokens.eos
    expected = []
    for text, target in inputs:
        gen = reference.generate(text, target=target)
        expected.append((tuple(t for t in gen.ids if t != eos), gen.text))
    faults = plan_faults(cfg)
    say(
        f"{cfg.requests} requests, {cfg.clients} clients, seed {cfg.seed}; faults planned: "
        + ", ".join(f"{k} x{sum(f.kind == k for f in faults)}" for k in FAULT_KINDS)
    )
    cloud_port = free_port()
    cloud = CloudProcess(path, cloud_port, workdir / "cloud.log")
    relay = ShapingRelay(("127.0.0.1", cloud_port), state=LinkState(delay_ms=cfg.base_delay_ms))
    agents: list[EdgeProcess] = []
    records = [StreamRecord(i) for i in range(cfg.requests)]
    try:
        cloud.start()
        relay_port = relay.start()
        address = f"127.0.0.1:{relay_port}"
        sockets = [workdir / "edge.sock"]
        agents.append(EdgeProcess(edge_yaml(cfg, path, sockets[0], address), workdir))
        if cfg.handoff and cfg.clients > 1:
            (workdir / "handoff").mkdir(exist_ok=True)
            sockets.append(workdir / "handoff" / "edge.sock")
            config = edge_yaml(cfg, path, sockets[1], address, handoff=True)
            agents.append(EdgeProcess(config, workdir / "handoff"))
        for agent in agents:
            agent.start()
        say(
            f"cloud pid {cloud.pid} on :{cloud_port}, relay :{relay_port}, agent pid "
            + ", ".join(str(a.pid) for a in agents)
            + (" (the second: every request by HANDOFF)" if len(agents) > 1 else "")
        )
        injector = _Injector(faults, cloud, _Link(relay, cfg.base_delay_ms), say)
        next_index = iter(range(cfg.requests))
        lock = threading.Lock()
        t0 = time.monotonic()

        def client_loop(sock: Path) -> None:
            with EdgeClient(str(sock), timeout_s=cfg.request_timeout_s) as client:
                while True:
                    with lock:
                        index = next(next_index, None)
                    if index is None:
                        return
                    if cfg.rate_per_s:
                        time.sleep(max(0.0, t0 + index / cfg.rate_per_s - time.monotonic()))
                    text, target = inputs[index]
                    rid = f"chaos-{cfg.seed}-{index}"
                    fire = functools.partial(injector.reached, index)
                    _ask(client, text, target, records[index], rid, fire)
                    fire()

        threads = [
            threading.Thread(target=client_loop, args=(sockets[i % len(sockets)],))
            for i in range(cfg.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.monotonic() - t0
        injector.finish()
        if injector.errors:
            raise TandemError("fault injection failed: " + "; ".join(injector.errors))
        return summarize(records, expected, injector.fired, wall_s, cfg.seed)
    finally:
        for agent in agents:
            agent.stop()
        relay.stop()
        cloud.stop()


__all__ = [
    "ChaosConfig",
    "ChaosSummary",
    "Fault",
    "FinalSeen",
    "StreamRecord",
    "Verdict",
    "check_stream",
    "plan_faults",
    "run_chaos",
    "summarize",
]
