"""``tandem sim run``: replay real network traces through the routing policies.

The CLI shell around ``tandem.sim``: parses flags, reads traces, profiles and an optional
policy config, runs every trace x policy, prints the table, the target check and a progress
bar, and writes summary.csv / summary.json / targets.json / scenario.json and plots to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.errors import ConfigError
from tandem.yamlfile import read_yaml_mapping

if TYPE_CHECKING:
    from tandem.policy import PolicyConfig

log = logging.getLogger(__name__)

TRACES_HELP = """\
tandem sim run needs --traces DIR: a folder of network traces, one CSV per trace:

    t_s,bandwidth_mbps[,rtt_ms]
    0,5.28,
    0.1,4.92,
    ...

- t_s: seconds since the start of the trace (first row 0, strictly increasing);
- bandwidth_mbps: link throughput in Mbit/s, held from its t_s until the next row;
- rtt_ms (optional): a measured round-trip time; empty where none was measured.

The last row holds for the median interval, or for the 'last_row_hold_s' column of an
index.csv in the same folder. Other CSVs in the folder (whose header is not the trace
header) are skipped.

Where to get traces: the Tandem repository's sibling 'shared/traces' folder holds 21 real
public traces in this format (Mahimahi cellular, Norway 3G, Ghent 4G, NYU LTE, FCC broadband,
UCC and Lumos 5G; provenance and licences in its README). Any throughput log converts with a
few lines: one row per measurement interval, Mbit/s.

    tandem sim run --traces ../shared/traces --out runs/sim
"""


def register(subparsers) -> None:
    from tandem.sim.runner import SIM_POLICIES

    sim = subparsers.add_parser("sim", help="trace-driven simulation of routing policies")
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    sim.set_defaults(func=lambda args: _no_subcommand(sim))
    run = sim_sub.add_parser(
        "run",
        help="replay traces x policies and report latency, cloud share, bytes and regret",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument(
        "--traces", type=Path, help="folder of trace CSVs (t_s,bandwidth_mbps[,rtt_ms])"
    )
    run.add_argument(
        "--policies",
        default=",".join(SIM_POLICIES),
        help=f"comma-separated subset of {','.join(SIM_POLICIES)}",
    )
    run.add_argument("--requests", type=int, default=2000, help="requests per trace")
    run.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    run.add_argument("--out", type=Path, help="output folder")
    run.add_argument(
        "--device-speed-factor",
        type=float,
        default=None,
        help="device profile times are multiplied by this (default: the scenario's, 5)",
    )
    run.add_argument("--load", choices=("idle", "busy", "bursty"), default=None, help="device load")
    run.add_argument("--rate", type=float, default=None, help="request arrivals per second")
    run.add_argument("--base-rtt-ms", type=float, default=None, help="RTT where a trace has none")
    run.add_argument("--loss-rate", type=float, default=None, help="per-packet loss probability")
    run.add_argument("--codec", choices=("fp32", "fp16", "int8"), default=None, help="upload codec")
    run.add_argument(
        "--local-only-share", type=float, default=None, help="share of private requests"
    )
    run.add_argument("--byte-budget", type=float, default=None, help="metered bytes for the run")
    run.add_argument(
        "--network-type",
        choices=("lte", "3g", "5g", "wifi"),
        default=None,
        help="radio of a trace whose index.csv has no 'family' (default lte); sets its energy",
    )
    run.add_argument("--policy-config", type=Path, help="YAML mapping of PolicyConfig fields")
    run.add_argument("--device-profile", type=Path, help="device profile (default: shipped)")
    run.add_argument("--cloud-profile", type=Path, help="cloud profile (default: shipped)")
    run.add_argument(
        "--workload",
        choices=("text", "speech"),
        default="text",
        help="text: the default model's requests; speech: one request per audio window",
    )
    run.add_argument(
        "--window-s", type=float, default=30.0, help="speech: seconds of audio per window"
    )
    run.add_argument(
        "--tokens-per-window", type=float, default=40.0, help="speech: mean tokens per window"
    )
    run.add_argument(
        "--hidden-size", type=int, default=384, help="speech: the model's d_model (upload width)"
    )
    run.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    run.set_defaults(func=run_command)


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


class _Progress:
    """A one-line progress bar on stderr (plain lines every 10% when not a terminal)."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last_decile = -1

    def __call__(self, done: int, total: int, label: str) -> None:
        frac = done / total if total else 1.0
        elapsed = time.monotonic() - self.start
        if self.tty:
            filled = int(frac * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            line = f"\r[{bar}] {done}/{total} {elapsed:5.1f}s {label[:48]:<48}"
            self.stream.write(line)
            if done == total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(frac * 10) > self.last_decile or done == total:
            self.last_decile = int(frac * 10)
            print(f"sim: {done}/{total} runs, {elapsed:.1f}s", file=self.stream, flush=True)


def read_policy_config(path: Path | None, overrides: dict | None = None) -> PolicyConfig:
    """``--policy-config``: a YAML mapping of PolicyConfig keys (defaults without one), with
    command-line ``overrides`` on top; every problem is a ``ConfigError`` naming the file."""
    from tandem.policy import PolicyConfig

    data = read_yaml_mapping(path, "--policy-config") if path is not None else {}
    return PolicyConfig.from_dict({**data, **(overrides or {})}, where=str(path or "policy"))


def run_command(args: argparse.Namespace) -> int:
    if args.traces is None:
        print(TRACES_HELP)
        return 2
    if args.out is None:
        raise ConfigError("--out DIR is required (where the tables and plots go)")

    from tandem.sim.link import LinkConfig
    from tandem.sim.profiles import load_profile, shipped_profile_path
    from tandem.sim.report import (
        check_targets,
        format_checks,
        format_table,
        summarize,
        write_outputs,
    )
    from tandem.sim.runner import Scenario, run_experiment
    from tandem.sim.trace import load_traces

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise ConfigError("--policies must name at least one policy")
    if len(set(policies)) != len(policies):
        raise ConfigError(f"--policies names a policy twice: {args.policies}")
    if args.requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {args.requests}")

    overrides = {"codec": args.codec} if args.codec is not None else {}
    cfg = read_policy_config(args.policy_config, overrides)

    link_over = {
        k: v
        for k, v in (("base_rtt_ms", args.base_rtt_ms), ("loss_rate", args.loss_rate))
        if v is not None
    }
    scenario_over = {
        k: v
        for k, v in (
            ("device_speed_factor", args.device_speed_factor),
            ("load", args.load),
            ("rate_per_s", args.rate),
            ("local_only_share", args.local_only_share),
            ("byte_budget", args.byte_budget),
            ("network_type", args.network_type),
        )
        if v is not None
    }
    scenario = Scenario(link=LinkConfig(**link_over), **scenario_over)
    device_path = args.device_profile or shipped_profile_path("device")
    cloud_path = args.cloud_profile or shipped_profile_path("cloud")
    device = load_profile(device_path)
    cloud = load_profile(cloud_path)
    speech = None
    if args.workload == "speech":
        from tandem.sim.speech import SpeechWorkload

        speech = SpeechWorkload(args.window_s, args.tokens_per_window, args.hidden_size)
        device = speech.profile(device)  # uploads priced at the speech model's width
    traces = load_traces(args.traces)

    t0 = time.monotonic()
    draws, results, oracles = run_experiment(
        traces,
        policies,
        args.requests,
        args.seed,
        scenario,
        device,
        cloud,
        cfg,
        progress=_Progress(),
        workload_maker=speech.maker() if speech is not None else None,
    )
    rows = [summarize(r, oracles[r.trace]) for r in results]
    checks = check_targets(rows, {name: float(o.cloud.mean()) for name, o in oracles.items()})
    meta = {
        "seed": args.seed,
        "requests": args.requests,
        "policies": policies,
        "scenario": dataclasses.asdict(scenario),
        "policy_config": dataclasses.asdict(cfg),
        "device_profile": {"file": Path(device_path).name, "host": device.description},
        "cloud_profile": {"file": Path(cloud_path).name, "host": cloud.description},
        "run_span_s": round(draws.end_s, 3),
        "traces": {
            t.name: {
                "duration_s": t.duration_s,
                "loops": round(draws.end_s / t.duration_s, 2),
                "network_type": t.network_type or scenario.network_type,
            }
            for t in traces
        },
    }
    if speech is not None:  # the text workload's outputs stay as they were, key for key
        meta["workload"] = {"kind": "speech", "src_len": speech.src_len,
                            **dataclasses.asdict(speech)}  # fmt: skip
    written = write_outputs(args.out, rows, checks, meta, traces, results, plots=not args.no_plots)
    elapsed = time.monotonic() - t0

    if speech is not None:
        print(
            f"speech workload: {speech.window_s:g} s windows ({speech.src_len} x "
            f"{speech.hidden_size} hidden states), {speech.tokens_per_window:g} tokens per window"
        )
    print(format_table(rows))
    print()
    print(format_checks(checks))
    print()
    print(
        f"{len(traces)} traces x {len(policies)} policies x {args.requests} requests in {elapsed:.1f} s"
    )
    print(f"wrote {len(written)} files to {args.out}")
    return 0
