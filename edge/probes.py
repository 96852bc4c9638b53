"""The agent's probes: how busy the device is, and when the cloud pings leave.

Device load: the policy prices local decoding at the current load; our own decoding must not
count as "load", or every local request would make the next one look slower and push it to
the cloud. So the probe reports system CPU use minus this process's share. Sampled in the
background every ``interval_s`` (psutil needs two readings to compute a rate).

Ping beats: pings leave at whole multiples of the ping interval on the system's monotonic
clock (``ping_beat``), not counted from the agent's start. A process on the same machine (the
emulator) thus knows when the agent's pings leave, and can start a replayed trace on a beat,
as the simulator's probes start at trace time 0. A fleet of devices still pings at unrelated
moments: each monotonic clock counts from its own boot.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import psutil

log = logging.getLogger(__name__)


def ping_beat(now: float, interval_s: float) -> int:
    """Index of the first ping beat strictly after ``now``; beat ``k`` is at ``k * interval_s``
    on the monotonic clock. An index, not a time: a loop advances it by at least one per ping,
    so float rounding in ``now / interval_s`` can never make one beat fire twice."""
    if not interval_s > 0:
        raise ValueError(f"ping interval must be > 0, got {interval_s}")
    return math.floor(now / interval_s) + 1


def ping_on_beat(
    ping: Callable[[], float | None],
    interval_s: float,
    stop: threading.Event,
    sent: Callable[[], None],
    answered: Callable[[float | None], None],
) -> None:
    """Until ``stop``: on every beat, ``sent()``, then ``answered(ping())`` (RTT ms or None).

    A fixed beat (not "interval after the last answer") keeps the probe rate the same whether
    the link is up or down, so an outage is seen at most one interval plus one timeout after
    it starts — as the simulator's probes see it. The beat is the clock's, not the agent's
    start (``ping_beat``), so the emulator can line a trace up with it.
    """
    beat = ping_beat(time.monotonic(), interval_s)
    while not stop.wait(max(0.0, beat * interval_s - time.monotonic())):
        sent()
        answered(ping())
        beat = max(beat + 1, ping_beat(time.monotonic(), interval_s))  # a late beat is skipped


class DeviceLoadProbe:
    def __init__(self, interval_s: float = 0.5) -> None:
        self._interval_s = interval_s
        self._process = psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        self._value = 0.0
        self._stop = threading.Event()
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                total = psutil.cpu_percent(interval=None) / 100.0
                ours = self._process.cpu_percent(interval=None) / 100.0 / self._cpus
            except psutil.Error:  # a transient /proc read failure: keep the last value
                continue
            self._value = min(max(total - ours, 0.0), 1.0)

    def other_load(self) -> float:
        """Fraction (0..1) of the device's CPU used by other processes, last sample."""
        return self._value

    def close(self) -> None:
        self._stop.set()
