"""Device: the simulated device's compute lanes, and what encoder and decoder runs cost there.

Kept apart from the runner so the runner only routes and records; the timing of the device
(load slowdown, lane booking, prefix-forced resumes) is one concept, shared by every route and
by the HANDOFF race in ``sim/handoff.py``.
"""

from __future__ import annotations

import bisect
import math

from tandem.policy import Profile, slowdown
from tandem.sim.load import LoadSeries

DEVICE_MAX_LOAD = 0.9
"""The simulated device never gives local decoding less than 10% of its CPU."""


class Device:
    """The device's compute lanes: encoder passes and decoder runs, each unpreempted on one lane.

    ``lanes`` runs can proceed at once at full speed (a phone runs one inference per big-core
    cluster or so); a run that finds every lane busy waits. Work is booked as busy intervals.
    Requests are played in arrival order, but a fallback or hedge books its local run at a
    future instant (a deadline); a later request's encoder may still use the gap before it, as
    it would on a real device. Intervals that ended before the current request are forgotten.
    """

    def __init__(self, profile: Profile, load: LoadSeries, lanes: int) -> None:
        self.profile = profile
        self.load = load
        self.lanes: list[list[tuple[float, float]]] = [[] for _ in range(lanes)]

    def slow(self, t_s: float) -> float:
        return slowdown(self.load.at(t_s), DEVICE_MAX_LOAD)

    def forget_before(self, t_s: float) -> None:
        for busy in self.lanes:
            while busy and busy[0][1] <= t_s:
                busy.pop(0)

    def slot(self, earliest_s: float, duration) -> tuple[float, float, int]:
        """Earliest (start, end, lane) at or after ``earliest_s`` fitting ``duration(start)`` s."""
        best = None
        for lane, busy in enumerate(self.lanes):
            t = earliest_s
            for start, end in busy:
                if end <= t:
                    continue
                if t + duration(t) <= start:
                    break
                t = end
            if best is None or t < best[0]:
                best = (t, t + duration(t), lane)
        return best

    def book(self, start_s: float, end_s: float, lane: int) -> None:
        if end_s > start_s:
            bisect.insort(self.lanes[lane], (start_s, end_s))

    def free_from(self, t_s: float) -> float:
        """First instant at or after ``t_s`` when some lane is idle."""
        best = math.inf
        for busy in self.lanes:
            t = t_s
            for start, end in busy:
                if start <= t < end:
                    t = end
            best = min(best, t)
        return best

    def encode(self, arrival_s: float, src_len: int) -> tuple[float, float]:
        """Run the encoder; returns (end time, measured ms) — the agent times its encoder."""
        ms = self.profile.encoder_ms(src_len)
        start, end, lane = self.slot(arrival_s, lambda t: ms * self.slow(t) / 1000.0)
        self.book(start, end, lane)
        return end, (end - start) * 1000.0

    def decode_s(self, start_s: float, steps: int, prefix: int = 0) -> float:
        """Seconds to decode ``steps`` steps starting at ``start_s``, the first ``prefix`` of
        them forced from received tokens in one pass (costed like an encoder pass)."""
        p = self.profile
        ms = p.decode_ms(steps) - p.decode_ms(prefix)
        if prefix:
            ms += p.encoder_ms(prefix)
        return ms * self.slow(start_s) / 1000.0

    def decode_slot(
        self, earliest_s: float, steps: int, prefix: int = 0
    ) -> tuple[float, float, int]:
        return self.slot(earliest_s, lambda t: self.decode_s(t, steps, prefix))
