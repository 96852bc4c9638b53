"""Helpers every benchmark shares: medians and ratios, raw ``session.run`` timing, peak RSS, output.

Kept small on purpose; each helper exists because benchmarks must agree on how they measure:

- ``TimedSession`` wraps an ONNX Runtime session and records the wall time of each ``run``
  call, so a benchmark can report the *floor* (the sum of raw ``session.run`` times) from the
  very runs it times end to end, instead of from separate runs that background load skews.
- ``Worker`` runs one system in a child process of its own. The peak RSS of a process only
  grows, so one process measuring several systems would report the largest of them for all;
  a child's ``ru_maxrss`` (read with ``os.wait4`` when it exits) is that system's alone. It
  also keeps one system's thread pools and imports (torch) out of another system's timings.
- ``paired_ratio``: the median, over repeats, of a ratio taken within one repeat. Systems run
  back to back within a repeat, so slow drifts in background load cancel out of the ratio.
- ``markdown_table`` / ``print_table``: one table format for the terminal and for the results
  page a benchmark writes (``bench/results.py``); the last line a benchmark prints is one JSON
  object (``print_json_line``) for scripts to read.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any


def geomean(values: Sequence[float]) -> float:
    """Geometric mean: the right average for ratios (a 2× and a 0.5× average to 1×)."""
    if not values:
        raise ValueError("geomean of no values")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of ``numerators[i] / denominators[i]``: repeat i of two systems, run back to back."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("paired_ratio needs two equally long, non-empty sequences")
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


class TimedSession:
    """An ``onnxruntime.InferenceSession`` whose ``run`` calls are timed; all else delegates.

    ``times_ms`` holds the wall time of every ``run`` since the last ``reset()``, in call
    order. Two ``perf_counter`` calls per run are all it adds (well under a microsecond).
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self.times_ms: list[float] = []

    def run(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self._session.run(*args, **kwargs)
        self.times_ms.append((time.perf_counter() - start) * 1000)
        return out

    def reset(self) -> None:
        self.times_ms = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class Worker:
    """A child process serving JSON requests on stdin, one JSON reply per line on stdout.

    The child runs ``serve(handle)`` (below) with a function of its own. ``close()`` ends it
    and returns its peak RSS in MB (``ru_maxrss`` of that child alone). Its stderr passes
    through, so warnings and tracebacks stay visible.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cores: Sequence[int] | None = None,
    ) -> None:
        """``cores``: pin the child (and every thread it starts) to these CPUs (Linux)."""
        pin = None if cores is None else functools.partial(os.sched_setaffinity, 0, cores)
        self._proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=pin,
        )

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            raise RuntimeError(f"worker {self._proc.args[1:]} died (exit code {code})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self._proc.args[1:]} failed: {reply['error']}")
        return reply

    def close(self) -> float:
        """End the child; its peak resident set size in MB."""
        self._proc.stdin.close()
        _, status, usage = os.wait4(self._proc.pid, 0)
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        if self._proc.returncode != 0:
            raise RuntimeError(f"worker {self._proc.args[1:]} exited with {self._proc.returncode}")
        return usage.ru_maxrss / 1024  # Linux reports KiB

    def kill(self) -> None:
        """End the child at once (the parent is failing; nobody needs its figures)."""
        self._proc.kill()
        self._proc.wait()


def serve(handle) -> None:
    """The child's side of ``Worker``: answer each request line with ``handle(request)``.

    Replies go to the real stdout, which is then pointed at stderr, so that libraries printing
    to stdout cannot corrupt the protocol. A failing request answers ``{"error": ...}``.
    """
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for line in sys.stdin:
        try:
            reply = handle(json.loads(line))
        except Exception as exc:  # reported to the parent, which raises it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()


def versions(*distributions: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"-"`` when one is missing)."""
    found = {}
    for name in distributions:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get 3 significant digits, None shows as an em dash."""

    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in text:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print ``markdown_table``: a run's output reads like its results page."""
    print(markdown_table(headers, rows))


def print_json_line(result: dict[str, Any]) -> None:
    """The benchmark's last line: one JSON object."""
    print(json.dumps(result, sort_keys=False), flush=True)
