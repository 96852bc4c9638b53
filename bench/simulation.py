"""Simulation results: every routing policy against the static routes and the oracle, per trace.

The peers are in the same run: ``always_local`` and ``always_cloud`` (what an app does without
Tandem), ``threshold`` (a one-shot static rule) and the hindsight ``oracle`` (the best any
policy could do). It runs ``tandem sim run`` as users run it, on the shared traces, with the
shipped profiles and the default scenario, and writes the table of mean / p95 latency, cloud
share and regret with the targets ``tandem sim run`` checks.

    python bench/simulation.py [--traces DIR] [--requests 2000] [--seed 0] [--no-results]

Traces: ``--traces``, else ``$TANDEM_TRACES``, else ``../shared/traces`` beside the checkout.
Last line: one JSON object with ``targets_met``, the regret range and the wall time. The run
writes its results page, ``docs/results/simulation.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_json_line, print_table
from results import ROOT, ResultsPage, add_results_arguments

POLICIES = ("always_local", "always_cloud", "threshold", "cost_model", "oracle")


def traces_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("TANDEM_TRACES")
    return Path(env) if env else ROOT.parent / "shared" / "traces"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", help="trace folder ($TANDEM_TRACES or ../shared/traces)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per trace")
    parser.add_argument("--seed", type=int, default=0)
    add_results_arguments(parser)
    args = parser.parse_args()
    folder = traces_dir(args.traces)
    if not folder.is_dir():
        parser.error(f"no trace folder at {folder} (--traces or $TANDEM_TRACES)")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tandem-simulation-") as tmp:
        out = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "tandem.cli", "sim", "run", "--traces", str(folder),
             "--requests", str(args.requests), "--seed", str(args.seed), "--out", str(out),
             "--no-plots", "--policies", ",".join(POLICIES)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        targets = json.loads((out / "targets.json").read_text())
    wall_s = time.perf_counter() - began
    by = {(r["trace"], r["policy"]): r for r in summary}
    traces = sorted({r["trace"] for r in summary})
    headers = ["trace", *POLICIES, "cloud % (cost_model / oracle)", "cost_model regret"]
    rows = [
        [f"`{t}`",
         *(f"{by[t, p]['mean_ms']:.1f} / {by[t, p]['p95_ms']:.1f}" for p in POLICIES),
         f"{100 * by[t, 'cost_model']['cloud_share']:.1f} / "
         f"{100 * by[t, 'oracle']['cloud_share']:.1f}",
         f"{by[t, 'cost_model']['regret_pct']:+.1f}%"]
        for t in traces
    ]  # fmt: skip
    print_table(headers, rows)
    regrets = [by[t, "cost_model"]["regret_pct"] for t in traces]
    met = all(t["ok"] for t in targets)
    result = {
        "bench": "simulation",
        "traces": len(traces),
        "requests": args.requests,
        "seed": args.seed,
        "targets_met": met,
        "failed": [t["trace"] for t in targets if not t["ok"]],
        "regret_pct_min": min(regrets),
        "regret_pct_max": max(regrets),
        "wall_s": round(wall_s, 1),
    }
    page = ResultsPage("simulation", "Results: routing policies in simulation")
    page.text(
        f"`tandem sim run --requests {args.requests} --seed {args.seed}` on the {len(traces)} "
        "shared traces, shipped profiles, default scenario (see the simulation page). Each "
        "cell is **mean / p95 latency in ms** (arrival to last token); *cloud %* is the share "
        "of requests routed to the cloud; *regret* is cost_model's mean latency above the "
        "oracle's."
    )
    page.table(headers, rows)
    page.text(
        "Targets, checked by `tandem sim run` on every trace: the oracle sends 20-80 % of "
        "requests to the cloud (the choice matters); cost_model's mean is within 10 % of the "
        "oracle's; its mean and its p95 are no worse than both always_local's and "
        f"always_cloud's. **{'All met' if met else 'Missed on ' + ', '.join(result['failed'])}**"
        f"; cost_model's regret ranged {min(regrets):+.1f}% to {max(regrets):+.1f}%. "
        f"Wall time {wall_s:.0f} s without plots."
    )
    page.json(result)
    page.write(args.results_dir)
    print_json_line(result)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
