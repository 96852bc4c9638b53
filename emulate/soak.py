"""Soak bookkeeping: resource samples of the daemons over time, and the growth verdict.

A leak shows as growth under steady load: memory a request forgets to free, a socket or file
never closed, a thread per call that never ends. ``bench/soak.py`` drives the load and samples
both daemons (``sample``); ``verdict`` compares the start of the steady state with its end.
Warm-up is excluded on purpose: the first requests fill caches, ONNX Runtime arenas and gRPC's
thread pools, which is growth that stops.

Growth is measured between two windows of samples (medians, so one sample taken mid-request
does not decide), after warm-up: the first ``window`` samples and the last ``window``.
Targets (issue 8): RSS growth < 10 %, no file-descriptor growth, no thread growth.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import psutil

RSS_GROWTH_TARGET = 0.10
"""Largest relative RSS growth that passes."""


@dataclass(frozen=True)
class Sample:
    """One daemon's resources at one moment."""

    t_s: float
    """Seconds since the load started."""
    rss_bytes: int
    fds: int
    threads: int


def sample(pid: int, t_s: float) -> Sample:
    """Read a live process's RSS, open file descriptors and threads (from /proc via psutil)."""
    proc = psutil.Process(pid)
    with proc.oneshot():
        return Sample(t_s, proc.memory_info().rss, proc.num_fds(), proc.num_threads())


@dataclass(frozen=True)
class Growth:
    """How much one daemon grew between the start and the end of the steady state."""

    rss: float
    """Relative: end median / start median - 1."""
    fds: float
    """Absolute: end median - start median (descriptors)."""
    threads: float
    """Absolute: end median - start median (threads)."""
    samples: int
    """Samples after warm-up that the windows were drawn from."""

    @property
    def ok(self) -> bool:
        return self.rss < RSS_GROWTH_TARGET and self.fds <= 0 and self.threads <= 0


def growth(samples: list[Sample], warmup_s: float, window: int = 3) -> Growth:
    """Growth from the first to the last ``window`` samples taken after ``warmup_s``.

    Raises ValueError when fewer than ``2 * window`` samples follow the warm-up: a verdict
    from overlapping windows would hide growth.
    """
    steady = [s for s in samples if s.t_s >= warmup_s]
    if len(steady) < 2 * window:
        raise ValueError(
            f"need at least {2 * window} samples after warm-up, got {len(steady)}; "
            "run longer or sample more often"
        )
    first, last = steady[:window], steady[-window:]

    def median(values, attr):
        return statistics.median(getattr(s, attr) for s in values)

    return Growth(
        rss=median(last, "rss_bytes") / median(first, "rss_bytes") - 1.0,
        fds=median(last, "fds") - median(first, "fds"),
        threads=median(last, "threads") - median(first, "threads"),
        samples=len(steady),
    )


__all__ = ["RSS_GROWTH_TARGET", "Growth", "Sample", "growth", "sample"]
