"""Simulation results: every routing policy against the static routes and the oracle, per trace.

The peers are in the same run: ``always_local`` and ``always_cloud`` (what an app does without
Tandem), ``threshold`` (a one-shot static rule) and the hindsight ``oracle`` (the best any
single-route policy could do, request by request). It runs ``tandem sim run`` as users run it,
on the shared traces, with the shipped profiles and the default scenario, once per seed, and a
second time per seed with ``objective: min_energy`` (``--policy-config``), and writes:

- mean / p95 latency and device energy per trace and policy (the first seed);
- the targets of progressive handoff and energy-aware routing over every seed: ``handoff`` at or
  below the oracle's mean, within 3 % of it, p95 no worse than both static routes;
  ``cost_model`` within 5 % of the oracle; ``min_energy`` (on ``cost_model``) at most
  ``latency_budget_factor`` x cost_model's mean latency with at least 30 % less device energy
  on every LTE and 3G trace; byte-identical output for a rerun of the same seed.

    python bench/simulation.py [--traces DIR] [--requests 2000] [--seeds 0,1,2,3] [--no-results]

Traces: ``--traces``, else ``$TANDEM_TRACES``, else ``../shared/traces`` beside the checkout.
Last line: one JSON object with each target's count and the wall time. The run writes its
results page, ``docs/results/simulation.md``.
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

POLICIES = ("always_local", "always_cloud", "threshold", "cost_model", "handoff", "oracle")
ENERGY_POLICIES = ("cost_model", "handoff")
BUDGET = 1.15
HANDOFF_MARGIN = 0.03
COST_MODEL_MARGIN = 0.05
ENERGY_SAVING = 0.30


def traces_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("TANDEM_TRACES")
    return Path(env) if env else ROOT.parent / "shared" / "traces"


def sim_run(folder: Path, requests: int, seed: int, out: Path, policies, config=None) -> list:
    cmd = [sys.executable, "-m", "tandem.cli", "sim", "run", "--traces", str(folder),
           "--requests", str(requests), "--seed", str(seed), "--out", str(out), "--no-plots",
           "--policies", ",".join(policies)]  # fmt: skip
    if config is not None:
        cmd += ["--policy-config", str(config)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", help="trace folder ($TANDEM_TRACES or ../shared/traces)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per trace")
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds")
    add_results_arguments(parser)
    args = parser.parse_args()
    folder = traces_dir(args.traces)
    if not folder.is_dir():
        parser.error(f"no trace folder at {folder} (--traces or $TANDEM_TRACES)")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    began = time.perf_counter()
    latency: dict[int, dict] = {}
    energy: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-simulation-") as tmp:
        tmp_path = Path(tmp)
        config = tmp_path / "min_energy.yaml"
        config.write_text(f"objective: min_energy\nlatency_budget_factor: {BUDGET}\n")
        for seed in seeds:
            rows = sim_run(folder, args.requests, seed, tmp_path / f"s{seed}", POLICIES)
            latency[seed] = {(r["trace"], r["policy"]): r for r in rows}
            rows = sim_run(
                folder, args.requests, seed, tmp_path / f"e{seed}", ENERGY_POLICIES, config
            )
            energy[seed] = {(r["trace"], r["policy"]): r for r in rows}
        first = seeds[0]
        again = tmp_path / "again"
        sim_run(folder, args.requests, first, again, POLICIES)
        deterministic = all(
            (again / name).read_bytes() == (tmp_path / f"s{first}" / name).read_bytes()
            for name in ("summary.csv", "summary.json")
        )
        scenario = json.loads((tmp_path / f"s{first}" / "scenario.json").read_text())
    wall_s = time.perf_counter() - began
    kinds = {name: t["network_type"] for name, t in scenario["traces"].items()}
    traces = sorted(kinds)
    by = latency[first]

    headers = ["trace", "radio", *POLICIES, "handoff vs oracle", "J: cost_model / handoff"]
    rows = [
        [f"`{t}`", kinds[t],
         *(f"{by[t, p]['mean_ms']:.1f} / {by[t, p]['p95_ms']:.1f}" for p in POLICIES),
         f"{by[t, 'handoff']['regret_pct']:+.2f}%",
         f"{by[t, 'cost_model']['energy_j_mean']:.2f} / {by[t, 'handoff']['energy_j_mean']:.2f}"]
        for t in traces
    ]  # fmt: skip
    print_table(headers, rows)

    # -- targets, per trace over every seed ------------------------------------------------------
    def worst(fn) -> float:
        return max(fn(latency[s], energy[s]) for s in seeds)

    target_rows = []
    counts = {"handoff_below": 0, "handoff_within": 0, "handoff_p95": 0, "cost_model": 0}
    energy_ok = energy_n = 0
    for t in traces:
        below = all(
            L[t, "handoff"]["mean_ms"] <= L[t, "oracle"]["mean_ms"] for L in latency.values()
        )
        h_reg = worst(lambda L, E, t=t: L[t, "handoff"]["regret_pct"])
        p95 = all(
            L[t, "handoff"]["p95_ms"] <= min(L[t, "always_local"]["p95_ms"], L[t, "always_cloud"]["p95_ms"])
            for L in latency.values()
        )  # fmt: skip
        c_reg = worst(lambda L, E, t=t: L[t, "cost_model"]["regret_pct"])
        counts["handoff_below"] += below
        counts["handoff_within"] += h_reg <= 100 * HANDOFF_MARGIN
        counts["handoff_p95"] += p95
        counts["cost_model"] += c_reg <= 100 * COST_MODEL_MARGIN
        cell = "-"
        if kinds[t] in ("lte", "3g"):
            lat = worst(
                lambda L, E, t=t: E[t, "cost_model"]["mean_ms"] / L[t, "cost_model"]["mean_ms"]
            )
            saved = min(
                1 - energy[s][t, "cost_model"]["energy_j_mean"] / latency[s][t, "cost_model"]["energy_j_mean"]
                for s in seeds
            )  # fmt: skip
            ok = lat <= BUDGET and saved >= ENERGY_SAVING
            energy_n += 1
            energy_ok += ok
            cell = f"{lat:.3f}x, {100 * saved:.1f}% less" + ("" if ok else " MISS")
        target_rows.append(
            [f"`{t}`", "yes" if below else "no", f"{h_reg:+.2f}%", "ok" if p95 else "MISS",
             f"{c_reg:+.2f}%" + ("" if c_reg <= 100 * COST_MODEL_MARGIN else " MISS"), cell]
        )  # fmt: skip
    target_headers = [
        "trace",
        "handoff <= oracle (every seed)",
        "handoff vs oracle (worst seed)",
        "handoff p95 <= both static",
        "cost_model vs oracle (worst seed)",
        "min_energy latency / energy vs cost_model (worst seeds)",
    ]
    print()
    print_table(target_headers, target_rows)
    n = len(traces)
    result = {
        "bench": "simulation",
        "traces": n,
        "requests": args.requests,
        "seeds": seeds,
        "handoff_at_or_below_oracle": counts["handoff_below"],
        "handoff_within_3pct": counts["handoff_within"],
        "handoff_p95_ok": counts["handoff_p95"],
        "cost_model_within_5pct": counts["cost_model"],
        "min_energy_ok": energy_ok,
        "min_energy_traces": energy_n,
        "deterministic": deterministic,
        "wall_s": round(wall_s, 1),
    }
    met = {
        "handoff at or below the oracle on >= 18 traces": counts["handoff_below"] >= 18,
        "handoff within 3 % of the oracle on every trace": counts["handoff_within"] == n,
        "handoff p95 no worse than both static routes on every trace": counts["handoff_p95"] == n,
        "cost_model within 5 % of the oracle on every trace": counts["cost_model"] == n,
        "min_energy: <= 1.15x latency, >= 30 % less energy on every LTE and 3G trace": (
            energy_ok == energy_n
        ),
        "same seed, byte-identical summary.csv and summary.json": deterministic,
    }
    result["targets_met"] = all(met.values())

    page = ResultsPage("simulation", "Results: routing policies in simulation")
    page.text(
        f"`tandem sim run --requests {args.requests} --seed S` on the {n} shared traces, seeds "
        f"{', '.join(map(str, seeds))}, shipped profiles, default scenario (see the simulation "
        "page); the radio of each trace is its collection's `family` (see the energy page). "
        f"Each policy cell is **mean / p95 latency in ms** (arrival to last token) for seed "
        f"{first}; *handoff vs oracle* is handoff's mean above the per-request single-route "
        "oracle's (negative: below it); *J* is the mean device energy per request (compute + "
        "radio)."
    )
    page.table(headers, rows)
    page.text(
        "Targets over every seed. *min_energy* is `cost_model` with `objective: min_energy` and "
        f"`latency_budget_factor: {BUDGET}`, against `cost_model` with the default latency "
        "objective on the same seed: the worst seed's latency ratio and the smallest energy "
        "saving."
    )
    page.table(target_headers, target_rows)
    page.text(
        "\n".join(f"- {'**met**' if ok else '**missed**'}: {name}" for name, ok in met.items())
        + f"\n\nWall time {wall_s:.0f} s without plots."
    )
    page.json(result)
    page.write(args.results_dir)
    print_json_line(result)
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
