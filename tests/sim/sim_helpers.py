"""Helpers shared by the simulator tests: synthetic traces and where the shared traces are."""

from __future__ import annotations

import os
from pathlib import Path

from tandem.sim.trace import parse_trace

REPO = Path(__file__).resolve().parents[2]


def shared_traces_dir() -> Path:
    """The shared trace collection: $TANDEM_TRACES, else ../shared/traces beside the repo."""
    return Path(os.environ.get("TANDEM_TRACES", REPO.parent / "shared" / "traces"))


def synthetic_trace(name: str = "synthetic", seconds: int = 600, outage=(200, 230)):
    """A 1 s trace: 4 Mbit/s, a dip to 0.3 Mbit/s for a minute, and a total outage."""
    rows = ["t_s,bandwidth_mbps"]
    for t in range(seconds):
        if outage[0] <= t < outage[1]:
            bw = 0.0
        elif 400 <= t < 460:
            bw = 0.3
        else:
            bw = 4.0 + (t % 7) * 0.5
        rows.append(f"{t},{bw}")
    return parse_trace("\n".join(rows) + "\n", name, last_row_hold_s=1.0)
