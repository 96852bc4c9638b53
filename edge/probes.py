"""Device probes: how busy the CPU is with work other than ours.

The policy prices local decoding at the current load; our own decoding must not count as
"load", or every local request would make the next one look slower and push it to the cloud.
So the probe reports system CPU use minus this process's share. Sampled in the background
every ``interval_s`` (psutil needs two readings to compute a rate).
"""

from __future__ import annotations

import logging
import threading

import psutil

log = logging.getLogger(__name__)


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
