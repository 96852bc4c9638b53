"""Report: summary rows per trace x policy, the target check, CSV/JSON files and plots.

``summary.json`` is read by other tools; its keys are a contract (``SUMMARY_KEYS``, documented
in docs/simulation.md, "Output files") — add keys, never rename or drop them. Every number is rounded to a
fixed precision before it is written, so the same seed gives byte-identical files.

Only the CLI prints; ``format_table`` returns text.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.sim.runner import RunResult
from tandem.sim.trace import Trace

log = logging.getLogger(__name__)

SUMMARY_KEYS: tuple[str, ...] = (
    "trace",
    "policy",
    "requests",
    "mean_ms",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "cloud_share",
    "bytes_up",
    "fallbacks",
    "timeouts",
    "regret_ms",
    "regret_pct",
    "energy_j_mean",
    "energy_j_p95",
    "radio_j_mean",
    "compute_j_mean",
    "uplink_bytes_mean",
)
"""Keys of every ``summary.json`` object and columns of ``summary.csv``, in order."""

ORACLE_SHARE_RANGE = (0.2, 0.8)
"""The default scenario is meant to make the route choice matter: in hindsight the oracle
should send between 20% and 80% of requests to the cloud."""
REGRET_TARGET = 0.10
"""``cost_model``'s mean latency should be within 10% of the oracle's."""


def _ms(x: float) -> float:
    return round(float(x), 3)


def _j(x: float) -> float:
    return round(float(x), 4)


def _energy(result: RunResult) -> dict:
    """The energy keys; None where the run booked no energy (the emulator measures none)."""
    keys = ("energy_j_mean", "energy_j_p95", "radio_j_mean", "compute_j_mean")
    if (
        result.compute_j.size != result.latency_ms.size
        or result.radio_j.size != result.compute_j.size
    ):
        return dict.fromkeys(keys)
    energy = result.energy_j
    return {
        "energy_j_mean": _j(energy.mean()),
        "energy_j_p95": _j(np.percentile(energy, 95)),
        "radio_j_mean": _j(result.radio_j.mean()),
        "compute_j_mean": _j(result.compute_j.mean()),
    }


def summarize(result: RunResult, oracle: RunResult) -> dict:
    """One summary row: latency statistics, routing counts and regret against the oracle."""
    lat = result.latency_ms
    mean = float(lat.mean())
    oracle_mean = float(oracle.latency_ms.mean())
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {
        "trace": result.trace,
        "policy": result.policy,
        "requests": int(lat.size),
        "mean_ms": _ms(mean),
        "p50_ms": _ms(p50),
        "p95_ms": _ms(p95),
        "p99_ms": _ms(p99),
        "cloud_share": round(float(result.cloud.mean()), 4),
        "bytes_up": int(round(float(result.bytes_up.sum()))),
        "fallbacks": int(result.fallback.sum()),
        "timeouts": int(result.timeout.sum()),
        "regret_ms": _ms(mean - oracle_mean),
        "regret_pct": round(100.0 * (mean / oracle_mean - 1.0), 2) if oracle_mean > 0 else 0.0,
        "uplink_bytes_mean": round(float(result.bytes_up.mean()), 1),
        **_energy(result),
    }


@dataclass(frozen=True)
class TargetCheck:
    """Whether the issue's targets hold on one trace (None where a needed policy was not run)."""

    trace: str
    oracle_share: float
    share_ok: bool
    regret_ok: bool | None
    mean_ok: bool | None
    p95_ok: bool | None

    @property
    def ok(self) -> bool:
        return self.share_ok and all(
            v is not False for v in (self.regret_ok, self.mean_ok, self.p95_ok)
        )


def check_targets(rows: Sequence[dict], oracle_shares: dict[str, float]) -> list[TargetCheck]:
    """Per trace: oracle cloud share in range; cost_model within 10% of the oracle's mean; its
    mean and p95 no worse than both always_local and always_cloud."""
    by = {(r["trace"], r["policy"]): r for r in rows}
    checks = []
    for trace, share in oracle_shares.items():
        cm = by.get((trace, "cost_model"))
        statics = [by.get((trace, p)) for p in ("always_local", "always_cloud")]
        statics = [r for r in statics if r is not None]
        regret_ok = mean_ok = p95_ok = None
        if cm is not None:
            regret_ok = cm["regret_pct"] <= 100 * REGRET_TARGET
            if statics:
                mean_ok = all(cm["mean_ms"] <= r["mean_ms"] for r in statics)
                p95_ok = all(cm["p95_ms"] <= r["p95_ms"] for r in statics)
        low, high = ORACLE_SHARE_RANGE
        checks.append(TargetCheck(trace, share, low <= share <= high, regret_ok, mean_ok, p95_ok))
    return checks


def summary_csv(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(SUMMARY_KEYS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in SUMMARY_KEYS})
    return out.getvalue()


def summary_json(rows: Sequence[dict]) -> str:
    return json.dumps([{k: row[k] for k in SUMMARY_KEYS} for row in rows], indent=1) + "\n"


def format_table(rows: Sequence[dict]) -> str:
    """The terminal table: one line per trace x policy."""
    width = max([len("trace")] + [len(r["trace"]) for r in rows])
    head = (
        f"{'trace':<{width}}  {'policy':<12} {'mean':>8} {'p50':>8} {'p95':>8} {'p99':>8} "
        f"{'cloud%':>6} {'KB up':>9} {'fallbk':>6} {'timeout':>7} {'regret%':>8} {'J mean':>7}"
    )
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        name = r["trace"] if r["trace"] != last else ""
        last = r["trace"]
        lines.append(
            f"{name:<{width}}  {r['policy']:<12} {r['mean_ms']:8.1f} {r['p50_ms']:8.1f} "
            f"{r['p95_ms']:8.1f} {r['p99_ms']:8.1f} {100 * r['cloud_share']:6.1f} "
            f"{r['bytes_up'] / 1000:9.1f} {r['fallbacks']:6d} {r['timeouts']:7d} "
            f"{r['regret_pct']:8.2f} "
            + (f"{r['energy_j_mean']:7.3f}" if r["energy_j_mean"] is not None else f"{'-':>7}")
        )
    lines.append(
        "latencies in ms (arrival to last token); regret% = mean vs the oracle's mean; "
        "J mean = device energy per request (compute + radio)"
    )
    return "\n".join(lines)


def format_checks(checks: Sequence[TargetCheck]) -> str:
    def mark(v: bool | None) -> str:
        return "-" if v is None else ("ok" if v else "MISS")

    width = max([len("trace")] + [len(c.trace) for c in checks])
    lines = [
        f"{'trace':<{width}}  {'oracle cloud%':>13} {'regret<=10%':>11} {'mean<=static':>12} "
        f"{'p95<=static':>11}"
    ]
    for c in checks:
        share = f"{100 * c.oracle_share:.1f}" + ("" if c.share_ok else " MISS")
        lines.append(
            f"{c.trace:<{width}}  {share:>13} {mark(c.regret_ok):>11} {mark(c.mean_ok):>12} "
            f"{mark(c.p95_ok):>11}"
        )
    missed = [c.trace for c in checks if not c.ok]
    lines.append(
        "targets met on every trace" if not missed else f"targets missed on: {', '.join(missed)}"
    )
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------

POLICY_COLORS = {
    "always_local": "tab:blue",
    "always_cloud": "tab:orange",
    "threshold": "tab:purple",
    "cost_model": "tab:green",
    "handoff": "tab:red",
    "oracle": "black",
}
TIMELINE_SPAN_S = 600.0
"""The timeline plot shows the first ten minutes: long enough for several load bursts and
network dips, short enough to see single requests."""


def _figure_module():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def plot_cdf(path: Path, trace: str, results: Sequence[RunResult]) -> None:
    """Latency CDF of every policy on one trace."""
    plt = _figure_module()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for r in results:
        lat = np.sort(r.latency_ms)
        y = np.arange(1, lat.size + 1) / lat.size
        ax.plot(lat, y, label=r.policy, color=POLICY_COLORS.get(r.policy), lw=1.6)
    ax.set_xscale("log")
    ax.set_xlabel("latency, arrival to last token (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.axhline(0.95, color="grey", lw=0.8, ls=":")
    ax.set_title(f"Latency CDF — {trace}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def plot_energy(path: Path, trace: str, results: Sequence[RunResult]) -> None:
    """Mean device energy against mean latency, one point per policy: the trade-off."""
    plt = _figure_module()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    for r in results:
        x, y = float(r.latency_ms.mean()), float(r.energy_j.mean())
        ax.scatter([x], [y], s=40, color=POLICY_COLORS.get(r.policy), label=r.policy, zorder=3)
        ax.annotate(r.policy, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("mean latency, arrival to last token (ms)")
    ax.set_ylabel("mean device energy per request (J)")
    ax.grid(True, alpha=0.3)
    kind = results[0].network_type if results else ""
    ax.set_title(f"Energy vs latency — {trace} ({kind})", fontsize=10)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def plot_timeline(path: Path, trace: Trace, results: Sequence[RunResult]) -> None:
    """Bandwidth, routing decisions and latency over the first ``TIMELINE_SPAN_S`` seconds."""
    plt = _figure_module()
    shown = [r for r in results if r.policy in ("cost_model", "oracle")] or list(results[:2])
    span = min(TIMELINE_SPAN_S, float(max(r.arrival_s.max() for r in results)))
    edges = np.arange(0.0, span + 1.0, 1.0)
    mbps = [
        trace.bytes_between(a, b) * 8 / 1e6 / (b - a)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.5), dpi=100, sharex=True)
    ax = axes[0]
    ax.step(edges[:-1], np.maximum(mbps, 1e-2), where="post", color="tab:gray", lw=0.9)
    ax.set_yscale("log")
    ax.set_ylabel("link Mbit/s\n(1 s mean)")
    ax.set_title(f"Timeline — {trace.name}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax = axes[1]
    for k, r in enumerate(shown):
        m = r.arrival_s <= span
        y = np.where(r.cloud[m], 1.0, 0.0) + (k - (len(shown) - 1) / 2) * 0.12
        ax.scatter(r.arrival_s[m], y, s=6, color=POLICY_COLORS.get(r.policy), label=r.policy)
        fb = m & r.fallback
        if fb.any():
            ax.scatter(r.arrival_s[fb], y[fb[m]], s=30, marker="x", color="red", lw=0.8)
    ax.set_yticks([0, 1], ["LOCAL", "CLOUD"])
    ax.set_ylim(-0.5, 1.5)
    ax.set_ylabel("route\n(x: fell back)")
    ax.legend(loc="center right", fontsize=7, markerscale=2)
    ax.grid(True, axis="x", alpha=0.3)
    ax = axes[2]
    for r in shown:
        m = r.arrival_s <= span
        ax.scatter(
            r.arrival_s[m], r.latency_ms[m], s=5, color=POLICY_COLORS.get(r.policy), label=r.policy
        )
    ax.set_yscale("log")
    ax.set_ylabel("latency ms")
    ax.set_xlabel("time in run (s)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_outputs(
    out: Path,
    rows: Sequence[dict],
    checks: Sequence[TargetCheck],
    meta: dict,
    traces: Sequence[Trace],
    results: Sequence[RunResult],
    plots: bool = True,
) -> list[Path]:
    """Write summary.csv, summary.json, targets.json, scenario.json and (optionally) plots."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("summary.csv", summary_csv(rows)),
        ("summary.json", summary_json(rows)),
        (
            "targets.json",
            json.dumps(
                [
                    {
                        "trace": c.trace,
                        "oracle_cloud_share": round(c.oracle_share, 4),
                        "oracle_share_ok": c.share_ok,
                        "regret_ok": c.regret_ok,
                        "mean_ok": c.mean_ok,
                        "p95_ok": c.p95_ok,
                        "ok": c.ok,
                    }
                    for c in checks
                ],
                indent=1,
            )
            + "\n",
        ),
        ("scenario.json", json.dumps(meta, indent=1, sort_keys=True) + "\n"),
    ):
        path = out / name
        path.write_text(text)
        written.append(path)
    if plots:
        plot_dir = out / "plots"
        plot_dir.mkdir(exist_ok=True)
        for trace in traces:
            mine = [r for r in results if r.trace == trace.name]
            if not mine:
                continue
            cdf = plot_dir / f"{trace.name}_cdf.png"
            plot_cdf(cdf, trace.name, mine)
            timeline = plot_dir / f"{trace.name}_timeline.png"
            plot_timeline(timeline, trace, mine)
            energy = plot_dir / f"{trace.name}_energy.png"
            plot_energy(energy, trace.name, mine)
            written += [cdf, timeline, energy]
    return written
