"""Trace: a real bandwidth recording, and how many bytes it carries between two instants.

A trace CSV is ``t_s,bandwidth_mbps[,rtt_ms]`` (the format of the shared trace collection; see
its README): each bandwidth value holds from its ``t_s`` until the next row (sample-and-hold),
the last row for the source's own interval. The link capacity is the integral of that step
function, ``C(t)`` bytes delivered from time 0 to ``t``; a transfer of ``B`` bytes starting at
``t0`` ends at the first ``t`` with ``C(t) >= C(t0) + B``. Zero-bandwidth stretches (outages)
are flat parts of ``C``: a transfer started there simply waits, which is how outages stall
uploads until the caller's deadline.

The trace loops when the simulated run is longer than the recording (``C`` continues with
period ``duration_s``), so short recordings can host long runs; runs longer than a recording
are told so in the report.

Parsing (``parse_trace``) is pure; ``load_trace``/``load_traces`` read files.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from tandem.errors import ConfigError
from tandem.policy.energy import network_type_of

log = logging.getLogger(__name__)

HEADER = ("t_s", "bandwidth_mbps")
INDEX_FILE = "index.csv"
"""The shared collection's index; its ``last_row_hold_s`` column gives each file's last hold."""


@dataclass(frozen=True)
class Trace:
    """A looped sample-and-hold bandwidth signal with optional measured RTTs."""

    name: str
    t_s: tuple[float, ...]
    """Start of each row, strictly increasing, first 0."""
    bandwidth_mbps: tuple[float, ...]
    duration_s: float
    """Last t_s + last-row hold: the period of the loop."""
    rtt_t_s: tuple[float, ...] = ()
    rtt_ms: tuple[float, ...] = ()
    """Measured RTTs (only where the source measured them), held until the next one."""
    network_type: str | None = None
    """Radio the trace was recorded on (a key of ``policy.energy.RADIOS``), from the ``family``
    column of the collection's index; None: not known (the scenario's default applies)."""
    _rate: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _cum: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rate = tuple(mbps * 125_000.0 for mbps in self.bandwidth_mbps)  # bytes/s
        cum = [0.0]
        ends = self.t_s[1:] + (self.duration_s,)
        for start, end, r in zip(self.t_s, ends, rate, strict=True):
            cum.append(cum[-1] + r * (end - start))
        object.__setattr__(self, "_rate", rate)
        object.__setattr__(self, "_cum", tuple(cum))

    @property
    def total_bytes(self) -> float:
        """Bytes the link can carry in one period."""
        return self._cum[-1]

    def bandwidth_at(self, t_s: float) -> float:
        """Mbit/s at time ``t_s`` (looped)."""
        local = t_s % self.duration_s
        return self.bandwidth_mbps[bisect.bisect_right(self.t_s, local) - 1]

    def capacity(self, t_s: float) -> float:
        """C(t): bytes the link can deliver from time 0 to ``t_s``."""
        k, local = divmod(t_s, self.duration_s)
        i = bisect.bisect_right(self.t_s, local) - 1
        return k * self._cum[-1] + self._cum[i] + self._rate[i] * (local - self.t_s[i])

    def time_at_capacity(self, target: float) -> float:
        """Earliest t with C(t) >= target (inf if the link never carries anything)."""
        if target <= 0:
            return 0.0
        total = self._cum[-1]
        if total <= 0:
            return math.inf
        k, rest = divmod(target, total)
        if rest <= 0:  # exactly at a period boundary: reached inside the previous period
            k -= 1
            rest = total
        j = bisect.bisect_left(self._cum, rest)  # first j with cum[j] >= rest; row j-1 reaches it
        i = j - 1
        return k * self.duration_s + self.t_s[i] + (rest - self._cum[i]) / self._rate[i]

    def transfer_end(self, start_s: float, nbytes: float) -> float:
        """When a transfer of ``nbytes`` that starts at ``start_s`` has all its bytes through."""
        if nbytes <= 0:
            return start_s
        return max(start_s, self.time_at_capacity(self.capacity(start_s) + nbytes))

    def bytes_between(self, start_s: float, end_s: float) -> float:
        """Bytes the link can carry in [start_s, end_s]."""
        if end_s <= start_s:
            return 0.0
        return self.capacity(end_s) - self.capacity(start_s)

    def measured_rtt_at(self, t_s: float) -> float | None:
        """Last RTT the source measured at or before ``t_s`` in this loop (None: none yet)."""
        if not self.rtt_t_s:
            return None
        i = bisect.bisect_right(self.rtt_t_s, t_s % self.duration_s) - 1
        return self.rtt_ms[i] if i >= 0 else None


def parse_trace(text: str, name: str, last_row_hold_s: float | None = None) -> Trace:
    """Parse a trace CSV. Without ``last_row_hold_s`` the last row holds for the median interval."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(c.strip() for c in rows[0][:2]) != HEADER:
        raise ConfigError(f"{name}: not a trace: header must start with t_s,bandwidth_mbps")
    has_rtt = len(rows[0]) >= 3 and rows[0][2].strip() == "rtt_ms"
    t_s: list[float] = []
    bw: list[float] = []
    rtt_t: list[float] = []
    rtt: list[float] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            t, b = float(row[0]), float(row[1])
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"{name}:{line_no}: expected numbers, got {row!r}") from exc
        if not (math.isfinite(t) and math.isfinite(b) and b >= 0):
            raise ConfigError(f"{name}:{line_no}: bandwidth must be finite and >= 0, got {row!r}")
        if t_s and t <= t_s[-1]:
            raise ConfigError(f"{name}:{line_no}: t_s must increase strictly, got {t}")
        if not t_s and t != 0:
            raise ConfigError(f"{name}:{line_no}: the first t_s must be 0, got {t}")
        t_s.append(t)
        bw.append(b)
        if has_rtt and len(row) >= 3 and row[2].strip():
            rtt_t.append(t)
            rtt.append(float(row[2]))
    if not t_s:
        raise ConfigError(f"{name}: no data rows")
    if last_row_hold_s is None:
        gaps = sorted(b - a for a, b in zip(t_s, t_s[1:], strict=False))
        last_row_hold_s = gaps[len(gaps) // 2] if gaps else 1.0
    if not last_row_hold_s > 0:
        raise ConfigError(f"{name}: last-row hold must be > 0, got {last_row_hold_s}")
    return Trace(
        name=name,
        t_s=tuple(t_s),
        bandwidth_mbps=tuple(bw),
        duration_s=t_s[-1] + last_row_hold_s,
        rtt_t_s=tuple(rtt_t),
        rtt_ms=tuple(rtt),
    )


def _index_rows(directory: Path) -> list[dict]:
    index = directory / INDEX_FILE
    if not index.exists():
        return []
    with index.open(newline="") as f:
        return list(csv.DictReader(f))


def _holds(directory: Path) -> dict[str, float]:
    holds = {}
    for row in _index_rows(directory):
        try:
            holds[row["file"]] = float(row["last_row_hold_s"])
        except (KeyError, TypeError, ValueError):
            continue
    return holds


def _network_types(directory: Path) -> dict[str, str]:
    """file -> network type, from the index's ``family`` column (LTE, 3G, 5G, broadband)."""
    types = {}
    for row in _index_rows(directory):
        kind = network_type_of(str(row.get("family") or ""))
        if kind is not None and row.get("file"):
            types[row["file"]] = kind
    return types


def load_trace(path: Path, last_row_hold_s: float | None = None) -> Trace:
    """Read one trace file; the hold comes from a sibling index.csv when not given."""
    path = Path(path)
    if last_row_hold_s is None:
        last_row_hold_s = _holds(path.parent).get(path.name)
    trace = parse_trace(_read(path), path.stem, last_row_hold_s)
    kind = _network_types(path.parent).get(path.name)
    return dataclasses.replace(trace, network_type=kind) if kind else trace


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read trace {path}: {exc}") from exc


def is_trace_file(path: Path) -> bool:
    """A CSV whose header is the trace header (index.csv and other tables are not)."""
    try:
        with Path(path).open(newline="") as f:
            first = f.readline()
    except OSError:
        return False
    return tuple(c.strip() for c in first.strip().split(",")[:2]) == HEADER


def load_traces(directory: Path) -> list[Trace]:
    """Every trace CSV in ``directory``, sorted by name; other CSVs are skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--traces {directory}: not a directory")
    holds = _holds(directory)
    types = _network_types(directory)
    traces = []
    for path in sorted(directory.glob("*.csv")):
        if not is_trace_file(path):
            log.info("skipping %s: not a trace", path.name)
            continue
        trace = parse_trace(_read(path), path.stem, holds.get(path.name))
        kind = types.get(path.name)
        traces.append(dataclasses.replace(trace, network_type=kind) if kind else trace)
    if not traces:
        raise ConfigError(f"--traces {directory}: no trace CSV (t_s,bandwidth_mbps[,rtt_ms]) found")
    return traces
