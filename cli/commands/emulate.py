"""``tandem emulate``: the real cloud service and edge agent over a link that follows a trace.

The CLI shell around ``tandem.emulate``: detects what the machine allows and says which mode
runs and why, draws the simulator's workload (same seed, same requests and arrival times),
runs it through the real daemons, and writes the same report files as ``tandem sim run``
(summary.csv/json, targets.json, scenario.json, plots). Regret is measured against the
simulator's oracle on the same draws (the emulator cannot know the future).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from tandem.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    from tandem.emulate.links import MODES
    from tandem.emulate.runner import EMU_POLICIES

    p = subparsers.add_parser(
        "emulate",
        help="run the real cloud and edge agent over a trace-shaped emulated link",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--trace", type=Path, required=True, help="trace CSV (t_s,bandwidth_mbps)")
    p.add_argument("--policy", choices=EMU_POLICIES, default="cost_model", help="routing policy")
    p.add_argument("--requests", type=int, default=50, help="requests to send")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload and the link")
    p.add_argument(
        "--mode", choices=MODES, default="auto", help="netns (root), loopback, or auto: the best"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--rate", type=float, default=None, help="request arrivals per second")
    p.add_argument("--base-rtt-ms", type=float, default=None, help="RTT where a trace has none")
    p.add_argument("--loss-rate", type=float, default=None, help="per-segment loss probability")
    p.add_argument(
        "--device-speed-factor",
        type=float,
        default=1.0,
        help="the agent prices its device this much slower than its profile",
    )
    p.add_argument("--device-profile", type=Path, help="device profile (default: shipped)")
    p.add_argument("--cloud-profile", type=Path, help="cloud profile (default: shipped)")
    p.add_argument("--policy-config", type=Path, help="YAML mapping of PolicyConfig fields")
    p.add_argument("--bundle", default=None, help="model bundle (default: the shipped model)")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    p.set_defaults(func=run_command)


def emulated_scenario(args: argparse.Namespace):
    """The simulator's Scenario for the world the emulator really runs: this machine as the
    device (idle load, its own speed unless told), one cloud decoding one request at a time
    with no queue."""
    from tandem.sim.link import LinkConfig
    from tandem.sim.runner import Scenario

    link = {
        k: v
        for k, v in (("base_rtt_ms", args.base_rtt_ms), ("loss_rate", args.loss_rate))
        if v is not None
    }
    extra = {"rate_per_s": args.rate} if args.rate is not None else {}
    return Scenario(
        device_speed_factor=args.device_speed_factor,
        load="idle",
        cloud_batch=1,
        cloud_queue_ms=0.0,
        link=LinkConfig(**link),
        **extra,
    )


def run_command(args: argparse.Namespace) -> int:
    from tandem.cli.commands.sim import read_policy_config
    from tandem.defaults import bundle_path
    from tandem.emulate.inputs import match_inputs
    from tandem.emulate.links import choose_mode
    from tandem.emulate.netns import remove_stale
    from tandem.emulate.runner import run_emulation
    from tandem.runtime.seq2seq import Seq2Seq
    from tandem.sim.profiles import load_profile, shipped_profile_path
    from tandem.sim.report import (
        check_targets,
        format_checks,
        format_table,
        summarize,
        write_outputs,
    )
    from tandem.sim.runner import make_draws, simulate
    from tandem.sim.trace import load_trace

    if args.requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {args.requests}")
    cfg = read_policy_config(args.policy_config)
    trace = load_trace(args.trace)
    scenario = emulated_scenario(args)
    device_path = args.device_profile or shipped_profile_path("device")
    cloud_path = args.cloud_profile or shipped_profile_path("cloud")
    device, cloud = load_profile(device_path), load_profile(cloud_path)

    mode, why, caps = choose_mode(args.mode)
    print(f"emulate: mode {mode}: {why}")
    print(f"emulate: capabilities: {caps.summary()}")
    if mode == "netns":
        remove_stale()
        print("emulate: rate by kernel qdisc (htb) on the veth; delay, loss, partitions and "
              "outages by the userspace relay")  # fmt: skip
    else:
        print("emulate: rate, delay, loss, partitions and outages by the userspace relay")

    draws = make_draws(args.requests, scenario, args.seed)
    model = Seq2Seq.load(bundle_path(args.bundle))
    inputs = match_inputs(model, draws.workload.requests, seed=args.seed)
    span = draws.workload.requests[-1].arrival_s
    print(
        f"emulate: {args.requests} requests over ~{span:.0f} s on {trace.name}, "
        f"policy {args.policy} ({inputs.inexact} inputs with inexact lengths)"
    )
    t0 = time.monotonic()
    result, info = run_emulation(
        trace, args.policy, draws, inputs, scenario, cfg, Path(device_path), Path(cloud_path),
        mode, seed=args.seed, bundle=bundle_path(args.bundle),
    )  # fmt: skip
    oracle = simulate(trace, "oracle", draws, scenario, device.scaled(scenario.device_speed_factor),
                      cloud, cfg)  # fmt: skip
    rows = [summarize(result, oracle)]
    checks = check_targets(rows, {trace.name: float(oracle.cloud.mean())})
    meta = {
        "emulated": True,
        "mode": mode,
        "mode_reason": why,
        "capabilities": dataclasses.asdict(caps),
        "seed": args.seed,
        "requests": args.requests,
        "policies": [args.policy],
        "scenario": dataclasses.asdict(scenario),
        "policy_config": dataclasses.asdict(cfg),
        "device_profile": {"file": Path(device_path).name, "host": device.description},
        "cloud_profile": {"file": Path(cloud_path).name, "host": cloud.description},
        "regret_against": "the simulator's oracle on the same draws",
        "run": dataclasses.asdict(info),
        "inputs_inexact": inputs.inexact,
        "traces": {trace.name: {"duration_s": trace.duration_s}},
    }
    written = write_outputs(
        args.out, rows, checks, meta, [trace], [result], plots=not args.no_plots
    )
    print(format_table(rows))
    print()
    print(format_checks(checks))
    print()
    print(
        f"answered {info.answered}/{info.requests}; relay carried {info.bytes_up} B up, "
        f"{info.bytes_down} B down on {info.connections} connection(s); "
        f"{time.monotonic() - t0:.1f} s"
    )
    for error in info.errors[:5]:
        print(f"error: {error}")
    print(f"wrote {len(written)} files to {args.out}")
    return 0 if info.answered == info.requests else 1
