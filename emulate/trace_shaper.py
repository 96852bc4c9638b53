"""TraceShaper: replay a bandwidth trace into a link, one ``LinkState`` every 100 ms.

What the link is at trace time ``t`` is the pure function ``link_state_at`` — the trace's
bandwidth at ``t`` (sample-and-hold, looped like the simulator's ``Trace``) both ways, the
trace's measured RTT where it has one or the base RTT, the loss rate, and whether a scheduled
partition covers ``t``. ``TraceShaper`` is the clock-driven shell: a thread that every
``interval_s`` computes the state for the elapsed time and hands it to a target (anything with
``set_state(LinkState)``: a ``ShapingRelay``, or the namespace link that splits the rate off
to a kernel qdisc). The clock, the wait and the jitter generator are injectable, so tests step
it by hand.

The same trace drives both directions, as in the simulator (most shared traces are downlink
recordings).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tandem.emulate.shaping import LinkState
from tandem.errors import ConfigError
from tandem.sim.trace import Trace

log = logging.getLogger(__name__)

TICK_S = 0.1
"""How often the link follows the trace: the finest granularity of the shared traces."""


@dataclass(frozen=True)
class Partition:
    """A scheduled blackout: 100 % loss from ``start_s`` for ``duration_s`` (trace time)."""

    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ConfigError(f"partition start_s must be >= 0, got {self.start_s}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ConfigError(f"partition duration_s must be > 0, got {self.duration_s}")

    def covers(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.start_s + self.duration_s


@dataclass(frozen=True)
class ShaperConfig:
    """What the trace does not say about the link (mirrors ``tandem.sim.link.LinkConfig``)."""

    base_rtt_ms: float = 60.0
    """Round trip where the trace has no measured RTT; half of it is added each way."""
    loss: float = 0.0
    """Per-segment uplink loss probability (each loss costs one RTT; see ``shaping.py``)."""
    rtt_jitter: float = 0.0
    """Sigma of a log-normal factor on the RTT, drawn afresh every tick (0: none)."""
    partitions: tuple[Partition, ...] = ()
    interval_s: float = TICK_S
    """Seconds between state updates."""
    offset_s: float = 0.0
    """Trace time at the start of the replay."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_rtt_ms) and self.base_rtt_ms >= 0):
            raise ConfigError(f"base_rtt_ms must be >= 0, got {self.base_rtt_ms}")
        if not 0 <= self.loss < 1:
            raise ConfigError(f"loss must be in [0, 1), got {self.loss}")
        if not (math.isfinite(self.rtt_jitter) and self.rtt_jitter >= 0):
            raise ConfigError(f"rtt_jitter must be >= 0, got {self.rtt_jitter}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ConfigError(f"interval_s must be > 0, got {self.interval_s}")
        if not (math.isfinite(self.offset_s) and self.offset_s >= 0):
            raise ConfigError(f"offset_s must be >= 0, got {self.offset_s}")


def link_state_at(trace: Trace, t_s: float, cfg: ShaperConfig, jitter: float = 1.0) -> LinkState:
    """The link at trace time ``t_s`` (pure; ``jitter`` multiplies the RTT)."""
    bps = trace.bandwidth_at(t_s) * 1e6
    measured = trace.measured_rtt_at(t_s)
    rtt_ms = (measured if measured is not None else cfg.base_rtt_ms) * jitter
    return LinkState(
        delay_ms=rtt_ms / 2.0,
        up_bps=bps,
        down_bps=bps,
        loss=cfg.loss,
        partitioned=any(p.covers(t_s) for p in cfg.partitions),
    )


class LinkTarget(Protocol):
    def set_state(self, state: LinkState) -> None: ...


class TraceShaper:
    """Drive ``target`` from ``trace`` in real time, every ``cfg.interval_s``."""

    def __init__(
        self,
        target: LinkTarget,
        trace: Trace,
        cfg: ShaperConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.target = target
        self.trace = trace
        self.cfg = cfg or ShaperConfig()
        self.clock = clock
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.t0: float | None = None
        self.ticks = 0
        self.last_state: LinkState | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def trace_time(self, now: float | None = None) -> float:
        """Trace seconds at ``now`` (the clock's reading by default)."""
        if self.t0 is None:
            return self.cfg.offset_s
        now = self.clock() if now is None else now
        return self.cfg.offset_s + (now - self.t0)

    def tick(self, now: float | None = None) -> LinkState:
        """Set the link for ``now`` and return what was set; the first call starts the replay."""
        now = self.clock() if now is None else now
        if self.t0 is None:
            self.t0 = now
        jitter = 1.0
        if self.cfg.rtt_jitter > 0:
            jitter = float(self.rng.lognormal(0.0, self.cfg.rtt_jitter))
        state = link_state_at(self.trace, self.trace_time(now), self.cfg, jitter)
        self.target.set_state(state)
        self.ticks += 1
        self.last_state = state
        return state

    def start(self) -> TraceShaper:
        """Set the first state now, then follow the trace in a background thread."""
        if self._thread is not None:
            raise ConfigError("trace shaper already started")
        self.tick()
        self._thread = threading.Thread(target=self._run, name="trace-shaper", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        k = 1
        while True:
            due = self.t0 + k * self.cfg.interval_s
            if self._stop.wait(max(0.0, due - self.clock())):
                return
            now = self.clock()
            k = max(k + 1, int((now - self.t0) / self.cfg.interval_s) + 1)  # skip missed ticks
            try:
                self.tick(now)
            except Exception:  # a failing target must not kill the replay silently
                log.exception("trace shaper tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> TraceShaper:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["TICK_S", "LinkTarget", "Partition", "ShaperConfig", "TraceShaper", "link_state_at"]
