"""Fidelity: does the simulator predict the real daemons? Same traces, policies and workload.

For each trace x policy the simulator (``tandem.sim``) and the emulator (``tandem.emulate``:
the real ``tandem cloud serve`` and ``tandem edge run`` over a trace-shaped link) play the
same draws — same seed, same requests, same arrival times — and the benchmark prints the mean
latency of each and their relative difference. Target: within 15 % on every trace x policy.

Nothing is tuned to make them agree. The simulator is told what the emulated world is, and
only that, measured first:

- the profiles of the shipped model on this machine, measured now with ``tandem profile`` (the
  emulated device and cloud both run here, so the device-speed factor is 1): the device's with
  the agent's ONNX Runtime threads (all cores but one), the cloud's with the service's (one
  per core);
- the two sides as two machines: the replica's CPU priority is below the agent's
  (``CLOUD_NICENESS``), so a replica decoding beside the device (a HANDOFF race) does not slow
  the device's own decoding, as it could not in a deployment;
- the scenario the emulator really runs: one request decoded at a time in the cloud, no cloud
  queue, this machine's load (idle as far as the simulator knows), the link's base RTT, loss
  and jitter, the policy's own config (priors, deadline, codec) on both sides;
- the fixed cost of a request outside the model runs (``Profile.request_overhead_ms``), which
  ``tandem profile`` cannot see: the agent's local API, tokenization and Python pipeline on
  every request, the service's gRPC handling and codec on cloud requests. It is calibrated
  with the real daemons on an *ideal* link (unlimited rate, no delay, no loss) and the same
  requests: the median over requests of their latency there minus the simulator's (robust to
  a request the machine preempted), always-local for the device and always-cloud for the
  cloud. Requests served locally never touch the link, so rows where a
  policy keeps everything local agree closely by construction; the rows that test the
  simulator's link and routing are the ones with cloud traffic. The agent and the simulator
  both get the calibrated profiles.

Noise: on a small host the machine's own speed drifts by up to ~20 % over a minute (other
work, other tenants), and one 25-request run of a row can land in such a stretch — rows that
keep every request on the device, where the simulator and the agent agree by construction,
missed by 19 % that way. So ``--repeats R`` plays the whole set R times, interleaved (repeat
by repeat, each with its own calibration right before it, so a slow stretch hits different
rows in different repeats), and a row's error is the **median** of its R signed errors (each
repeat's emulated mean against its simulated mean); the table shows all R. ``--quick``: 3
traces x 3 policies, 20 requests per run, 3 repeats, about 12 minutes. The last line is one
JSON object with ``max_rel_err``. ``--trace``/``--policy`` pick rows (repeatable);
``--per-request`` prints each request's route, reason and latency on both sides, the quickest
way to see why a row disagrees.

    python bench/sim_vs_emulation.py --quick
    python bench/sim_vs_emulation.py --trace mahimahi_tmobile-umts-driving_down.csv \
        --policy threshold --per-request

The run writes its results page, ``docs/results/sim_vs_emulation.md`` (``--no-results``: none).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import print_table
from results import ResultsPage, add_results_arguments

ROOT = Path(__file__).resolve().parents[1]
TARGET_REL_ERR = 0.15

QUICK_TRACES = (
    "mahimahi_verizon-lte-short_down.csv",
    "norway3g_bus_2010-09-29_1628_down.csv",
    "fcc_939562-google-mobile_down.csv",
)
FULL_TRACES = QUICK_TRACES + (
    "mahimahi_tmobile-umts-driving_down.csv",
    "nyumets-lte_bus57_down.csv",
    "belgium4g_bus-0003_down.csv",
)
QUICK_POLICIES = ("always_cloud", "cost_model")
FULL_POLICIES = ("always_local", "always_cloud", "threshold", "cost_model")
HANDOFF = "handoff"
"""The racing policy: the agent runs HANDOFF for real (``Decoder.Handoff``), the simulator
plays it (``tandem.sim.handoff``); its rows join both sets whenever the emulator can play it
(``tandem.emulate.runner.EMU_POLICIES``), and with them the race calibration."""


def traces_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("TANDEM_TRACES")
    return Path(env) if env else ROOT.parent / "shared" / "traces"


def measure_profile(out: Path, quick: bool, threads: int) -> Path:
    """This machine's profile of the shipped model at ``threads``, by the real ``tandem profile``."""
    argv = [
        sys.executable,
        "-m",
        "tandem.cli",
        "profile",
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    if quick:
        argv.append("--quick")
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    print(done.stdout.strip(), flush=True)
    return out


def constant_trace(mbps: float, name: str):
    """A trace at one rate throughout: the calibrations' links."""
    from tandem.sim.trace import parse_trace

    return parse_trace(f"t_s,bandwidth_mbps\n0,{mbps:g}\n1,{mbps:g}\n", name, 1.0)


def paired_run(
    trace, policy: str, device_path: Path, cloud_path: Path, mode: str, scenario, draws,
    inputs, workdir: Path, seed: int,
):  # fmt: skip
    """The simulator and the real daemons on the same trace, policy and draws, with the given
    profiles: (sim, emu) results, as the calibrations compare them."""
    from tandem.emulate.processes import CLOUD_NICENESS
    from tandem.emulate.runner import run_emulation
    from tandem.policy import PolicyConfig
    from tandem.sim.profiles import load_profile
    from tandem.sim.runner import simulate

    cfg = PolicyConfig()
    device, cloud = load_profile(device_path), load_profile(cloud_path)
    sim = simulate(trace, policy, draws, scenario, device, cloud, cfg)
    emu, _ = run_emulation(
        trace, policy, draws, inputs, scenario, cfg, device_path, cloud_path, mode,
        seed=seed, workdir=workdir, cloud_niceness=CLOUD_NICENESS,
    )  # fmt: skip
    return sim, emu


def calibrate_overheads(
    device_path: Path, cloud_path: Path, mode: str, scenario, draws, inputs, workdir: Path,
    seed: int,
) -> tuple[float, float]:  # fmt: skip
    """(device, cloud) fixed per-request costs in ms, real daemons minus simulator, ideal link.

    The same draws and texts as the measured runs (what requests cost to serve is a property
    of the workload and the machine, not of the link); only the link differs: no delay, no
    loss, no rate limit (the draws' RTT jitter and loss draws act on nothing there). A
    different sample would add its own sampling noise to every comparison. The scenario is
    the measured runs' own, on that ideal link.
    """
    from tandem.sim.link import LinkConfig

    ideal = constant_trace(10000, "ideal")
    scenario = dataclasses.replace(
        scenario, link=LinkConfig(base_rtt_ms=0.0, rtt_jitter=0.0, loss_rate=0.0)
    )
    gaps = {}
    for policy in ("always_local", "always_cloud"):
        sim, emu = paired_run(
            ideal, policy, device_path, cloud_path, mode, scenario, draws, inputs,
            workdir / policy, seed,
        )  # fmt: skip
        # The typical per-request gap, not the gap of the means: a fixed cost is the same on
        # every request, and one request the machine happened to preempt (a 25-request mean
        # moved by 30 ms in one run, 1 ms in another) must not set it for every row.
        gaps[policy] = float(np.nanmedian(emu.latency_ms - sim.latency_ms))
        print(
            f"calibration {policy}: emulator {np.nanmean(emu.latency_ms):.1f} ms, simulator "
            f"(no fixed costs) {sim.latency_ms.mean():.1f} ms",
            flush=True,
        )
    device_ms = max(0.0, gaps["always_local"])
    return device_ms, max(0.0, gaps["always_cloud"] - device_ms)


RACE_LINK_MBPS = 0.2
"""The constant link of the race calibration: slow enough that no upload of the quick
workload lands before its local run ends (a 14-token source's 3.7 kB take 150 ms, its local
decoding about 25), fast enough that the ``handoff`` policy still races (the cloud predicted
within its ``handoff_band`` of local)."""


def calibrate_race(
    device_path: Path, cloud_path: Path, mode: str, scenario, draws, inputs, workdir: Path,
    seed: int,
) -> float:  # fmt: skip
    """The device's cost of racing (``Profile.race_overhead_ms``) in ms, real agent minus
    simulator: ``handoff`` on a slow constant link where the local run wins every race, with
    the profiles already carrying the fixed per-request costs, so the typical gap left is what
    the race's upload, threads and stream checks cost the local run. Requests both sides raced
    count; the median, as for the fixed costs."""
    slow = constant_trace(RACE_LINK_MBPS, "slow-constant")
    sim, emu = paired_run(
        slow, "handoff", device_path, cloud_path, mode, scenario, draws, inputs,
        workdir / "race", seed,
    )  # fmt: skip
    raced = [
        i
        for i, (a, b) in enumerate(zip(sim.reasons, emu.reasons, strict=True))
        if a == b == "handoff_faster" and not sim.cloud[i] and not emu.cloud[i]
    ]
    gaps = emu.latency_ms[raced] - sim.latency_ms[raced]
    race_ms = max(0.0, float(np.nanmedian(gaps))) if raced else 0.0
    print(
        f"calibration handoff on {RACE_LINK_MBPS:g} Mbit/s: {len(raced)} requests raced and won locally, "
        f"emulator {np.nanmean(emu.latency_ms):.1f} ms, simulator (no race cost) "
        f"{sim.latency_ms.mean():.1f} ms",
        flush=True,
    )
    return race_ms


def with_overhead(profile_path: Path, overhead_ms: float, out: Path, race_ms: float = 0.0) -> Path:
    """A copy of a profile file with ``request_overhead_ms`` (and ``race_overhead_ms``) set."""
    import yaml

    data = yaml.safe_load(profile_path.read_text())
    data["request_overhead_ms"] = round(overhead_ms, 3)
    if race_ms:
        data["race_overhead_ms"] = round(race_ms, 3)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def print_per_request(sim, emu) -> None:
    """One line per request: where each side sent it, why, and how long it took; a ``*``
    marks requests whose route differs (the usual cause of a row's disagreement)."""
    print(f"# {sim.trace} {sim.policy}: arrival_s  sim route/reason/ms  emu route/reason/ms",
          file=sys.stderr)  # fmt: skip
    for i, arrival in enumerate(sim.arrival_s):
        routes = ["cloud" if run.cloud[i] else "local" for run in (sim, emu)]
        mark = "*" if routes[0] != routes[1] else " "
        print(
            f"{mark} {i:3d} {arrival:7.2f}  {routes[0]:5s} {sim.reasons[i]:24s} "
            f"{sim.latency_ms[i]:8.1f}  {routes[1]:5s} {emu.reasons[i]:24s} "
            f"{emu.latency_ms[i]:8.1f}",
            file=sys.stderr,
        )


def measured_run(sim, emu, info) -> dict:
    """One repeat of one row: both means, the signed error and what routed where."""
    sim_mean = float(sim.latency_ms.mean())
    emu_mean = float(np.nanmean(emu.latency_ms))
    return {
        "sim_mean_ms": sim_mean,
        "emu_mean_ms": emu_mean,
        "signed_err": (emu_mean - sim_mean) / sim_mean,
        "sim_cloud": float(sim.cloud.mean()),
        "emu_cloud": float(emu.cloud.mean()),
        "routes_differ": int((sim.cloud != emu.cloud).sum()),
        "sim_p95_ms": float(np.percentile(sim.latency_ms, 95)),
        "emu_p95_ms": float(np.nanpercentile(emu.latency_ms, 95)),
        "answered": info.answered,
        "requests": info.requests,
    }


def combine(trace: str, policy: str, runs: list[dict]) -> dict:
    """A row from its repeats: the median signed error (a slow stretch of the machine moves
    one repeat, not the median of three), the median of every other figure, and the answered
    requests summed."""

    def med(key: str) -> float:
        return float(np.median([r[key] for r in runs]))

    errs = [r["signed_err"] for r in runs]
    return {
        "trace": trace,
        "policy": policy,
        "sim_mean_ms": round(med("sim_mean_ms"), 1),
        "emu_mean_ms": round(med("emu_mean_ms"), 1),
        "rel_err": round(abs(float(np.median(errs))), 3),
        "repeats": [round(e, 3) for e in errs],
        "sim_cloud": round(med("sim_cloud"), 2),
        "emu_cloud": round(med("emu_cloud"), 2),
        "routes_differ": int(round(med("routes_differ"))),
        "sim_p95_ms": round(med("sim_p95_ms"), 1),
        "emu_p95_ms": round(med("emu_p95_ms"), 1),
        "answered": f"{sum(r['answered'] for r in runs)}/{sum(r['requests'] for r in runs)}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 traces x 2 policies")
    parser.add_argument("--traces", help="trace folder ($TANDEM_TRACES or ../shared/traces)")
    parser.add_argument("--requests", type=int, default=None, help="requests per run")
    parser.add_argument("--rate", type=float, default=1.0, help="arrivals per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="play the set this many times, interleaved; a row's error is the median (quick: 3)",
    )
    parser.add_argument("--mode", choices=("auto", "netns", "loopback"), default="auto")
    parser.add_argument(
        "--trace", action="append", help="only this trace file (repeatable; default: the set)"
    )
    parser.add_argument(
        "--policy", action="append", help="only this policy (repeatable; default: the set)"
    )
    parser.add_argument(
        "--per-request",
        action="store_true",
        help="also print each request's route, reason and latency in both (to stderr)",
    )
    add_results_arguments(parser)
    args = parser.parse_args()

    from tandem.defaults import bundle_path
    from tandem.edge.config import default_intra_op_threads
    from tandem.emulate.inputs import match_inputs
    from tandem.emulate.links import choose_mode
    from tandem.emulate.processes import CLOUD_NICENESS
    from tandem.emulate.runner import EMU_POLICIES, run_emulation
    from tandem.policy import PolicyConfig
    from tandem.runtime.seq2seq import Seq2Seq
    from tandem.sim.profiles import load_profile
    from tandem.sim.runner import Scenario, make_draws, simulate
    from tandem.sim.trace import load_trace

    folder = traces_dir(args.traces)
    names = args.trace or (QUICK_TRACES if args.quick else FULL_TRACES)
    policies = args.policy or (QUICK_POLICIES if args.quick else FULL_POLICIES)
    if not args.policy and HANDOFF in EMU_POLICIES:
        policies = (*policies, HANDOFF)
    n = args.requests or (20 if args.quick else 60)
    repeats = args.repeats or (3 if args.quick else 1)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    started = time.monotonic()
    mode, why, caps = choose_mode(args.mode)
    print(f"mode {mode}: {why}; {caps.summary()}", flush=True)

    scenario = Scenario(
        device_speed_factor=1.0, load="idle", rate_per_s=args.rate, cloud_batch=1,
        cloud_queue_ms=0.0,
    )  # fmt: skip
    cfg = PolicyConfig()
    draws = make_draws(n, scenario, args.seed)
    inputs = match_inputs(Seq2Seq.load(bundle_path()), draws.workload.requests, seed=args.seed)

    with tempfile.TemporaryDirectory(prefix="tandem-fidelity-") as tmp:
        tmpdir = Path(tmp)
        device_measured = measure_profile(
            tmpdir / "device-measured.yaml", args.quick, default_intra_op_threads()
        )
        cloud_measured = measure_profile(tmpdir / "cloud-measured.yaml", args.quick, 0)
        traces = [load_trace(folder / name) for name in names]
        runs: dict[tuple[str, str], list[dict]] = {}
        overheads = []
        for rep in range(repeats):
            work = tmpdir / f"r{rep}"
            work.mkdir()
            device_ms, cloud_ms = calibrate_overheads(
                device_measured, cloud_measured, mode, scenario, draws, inputs, work, args.seed
            )
            device_path = with_overhead(device_measured, device_ms, work / "device.yaml")
            cloud_path = with_overhead(cloud_measured, cloud_ms, work / "cloud.yaml")
            race_ms = 0.0
            if HANDOFF in policies:
                race_ms = calibrate_race(
                    device_path, cloud_path, mode, scenario, draws, inputs, work, args.seed
                )
                device_path = with_overhead(device_measured, device_ms, device_path, race_ms)
            overheads.append((device_ms, cloud_ms, race_ms))
            print(
                f"repeat {rep + 1}/{repeats}, calibrated: device {device_ms:.2f} ms, cloud "
                f"{cloud_ms:.2f} ms per request outside the model runs (ideal link); racing "
                f"{race_ms:.2f} ms on the device's local run",
                flush=True,
            )
            device_profile, cloud_profile = load_profile(device_path), load_profile(cloud_path)
            for trace in traces:
                for policy in policies:
                    sim = simulate(
                        trace, policy, draws, scenario, device_profile, cloud_profile, cfg
                    )
                    emu, info = run_emulation(
                        trace, policy, draws, inputs, scenario, cfg, device_path, cloud_path,
                        mode, seed=args.seed, cloud_niceness=CLOUD_NICENESS,
                    )  # fmt: skip
                    if args.per_request:
                        print_per_request(sim, emu)
                    run = measured_run(sim, emu, info)
                    runs.setdefault((trace.name, policy), []).append(run)
                    print(
                        f"{trace.name} {policy}: sim {run['sim_mean_ms']:.1f} ms, emu "
                        f"{run['emu_mean_ms']:.1f} ms ({100 * run['signed_err']:+.1f}%), "
                        f"{info.wall_s:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    rows = [combine(trace, policy, rs) for (trace, policy), rs in runs.items()]
    device_ms, cloud_ms, race_ms = (float(np.median(col)) for col in zip(*overheads, strict=True))

    headers = ["trace", "policy", "sim mean ms", "emu mean ms", "rel err", "each repeat",
               "sim p95", "emu p95", "cloud sim/emu", "routes differ", "answered"]  # fmt: skip
    table = [
        [r["trace"], r["policy"], str(r["sim_mean_ms"]), str(r["emu_mean_ms"]),
         f"{100 * r['rel_err']:.1f}%" + ("" if r["rel_err"] <= TARGET_REL_ERR else " MISS"),
         " ".join(f"{100 * e:+.1f}%" for e in r["repeats"]),
         str(r["sim_p95_ms"]), str(r["emu_p95_ms"]), f"{r['sim_cloud']:.2f}/{r['emu_cloud']:.2f}",
         r["routes_differ"], r["answered"]]
        for r in rows
    ]  # fmt: skip
    print()
    print_table(headers, table)
    max_err = max(r["rel_err"] for r in rows)
    summary = {
        "bench": "sim_vs_emulation",
        "mode": mode,
        "requests": n,
        "repeats": repeats,
        "rate_per_s": args.rate,
        "runs": len(rows),
        "device_overhead_ms": round(device_ms, 3),
        "cloud_overhead_ms": round(cloud_ms, 3),
        "race_overhead_ms": round(race_ms, 3),
        "max_rel_err": max_err,
        "mean_rel_err": round(float(np.mean([r["rel_err"] for r in rows])), 3),
        "target_rel_err": TARGET_REL_ERR,
        "target_met": max_err <= TARGET_REL_ERR,
        "wall_s": round(time.monotonic() - started, 1),
    }
    page = ResultsPage("sim_vs_emulation", "Results: simulator against emulator (fidelity)")
    page.text(
        f"Mode `{mode}` ({why}); {n} requests at {args.rate:g}/s per run, seed {args.seed}, "
        f"{repeats} interleaved repeat(s) of the whole set. Calibrated before each repeat, on an "
        f"ideal link: device {device_ms:.2f} ms, cloud {cloud_ms:.2f} ms per request outside "
        f"the model runs; on a {RACE_LINK_MBPS:g} Mbit/s constant link: racing costs the "
        f"device's local run {race_ms:.2f} ms (medians over repeats; device/cloud/race in "
        f"each: {', '.join(f'{d:.2f}/{c:.2f}/{r:.2f}' for d, c, r in overheads)}). "
        "Target: mean latency within "
        f"{TARGET_REL_ERR:.0%} per trace x policy; a row's error is the median of its "
        "repeats' signed errors (emulated mean against simulated mean, same repeat), all of "
        "them in *each repeat*."
    )
    page.table(headers, table)
    page.json(summary)
    page.write(args.results_dir)
    print()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
