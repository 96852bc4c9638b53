"""Device load: the share of the device's CPU other apps use, as a step function of time.

Local decoding gets what other work leaves, so load slows it by ``policy.slowdown(load)``
(1 / (1 - load), capped). Three documented kinds:

- ``idle``: 5% constant — the phone does nothing else.
- ``busy``: 50% constant — a steady background job (a sync, a video call's encoder).
- ``bursty`` (default): a two-state Markov process. Calm periods at 10% (exponential, mean
  ``calm_mean_s`` = 20 s) alternate with bursts at 75% (exponential, mean ``burst_mean_s`` =
  8 s) — a user who now and then opens a heavy app (camera, game, browser tab) next to the
  assistant. About 29% of the time is in a burst.

The series is drawn once per run from its seeded generator, so every trace and policy meets the
same load at the same instants. The agent never reads this series: it infers the load from how
long its own encoder just took (``policy.load_from_timing``), as a real agent can on a phone
that hides system-wide CPU counters.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import numpy as np

from tandem.errors import ConfigError

log = logging.getLogger(__name__)

LOAD_KINDS = ("idle", "busy", "bursty")

IDLE_LOAD = 0.05
BUSY_LOAD = 0.5
CALM_LOAD = 0.10
BURST_LOAD = 0.75
CALM_MEAN_S = 20.0
BURST_MEAN_S = 8.0


@dataclass(frozen=True)
class LoadSeries:
    """Load (0..1) from each ``t_s`` until the next; the last value holds forever."""

    kind: str
    t_s: tuple[float, ...]
    load: tuple[float, ...]

    def at(self, t_s: float) -> float:
        return self.load[max(0, bisect.bisect_right(self.t_s, t_s) - 1)]


def make_load(kind: str, duration_s: float, rng: np.random.Generator) -> LoadSeries:
    """A load series of ``kind`` covering at least ``duration_s`` seconds."""
    if kind == "idle":
        return LoadSeries(kind, (0.0,), (IDLE_LOAD,))
    if kind == "busy":
        return LoadSeries(kind, (0.0,), (BUSY_LOAD,))
    if kind != "bursty":
        raise ConfigError(f"load must be one of {list(LOAD_KINDS)}, got {kind!r}")
    times, loads = [], []
    t = 0.0
    burst = bool(rng.random() < BURST_MEAN_S / (BURST_MEAN_S + CALM_MEAN_S))
    while t <= duration_s:
        times.append(t)
        loads.append(BURST_LOAD if burst else CALM_LOAD)
        t += float(rng.exponential(BURST_MEAN_S if burst else CALM_MEAN_S))
        burst = not burst
    return LoadSeries(kind, tuple(times), tuple(loads))
