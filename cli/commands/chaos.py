"""``tandem chaos``: the chaos scenario (see ``tandem.emulate.chaos``) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chaos",
        help="requests through the real agent while the cloud is killed and the link fails",
    )
    p.add_argument("--requests", type=int, default=1000, help="requests sent (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seeds the inputs and the fault plan")
    p.add_argument("--clients", type=int, default=4, help="concurrent app threads (default 4)")
    p.add_argument(
        "--rate", type=float, default=30.0, help="requests per second sent (0: unpaced; default 30)"
    )
    p.add_argument("--kills", type=int, default=3, help="cloud SIGKILLs (default 3)")
    p.add_argument("--partitions", type=int, default=3, help="link partitions (default 3)")
    p.add_argument("--spikes", type=int, default=4, help="latency spikes (default 4)")
    p.add_argument(
        "--no-handoff",
        dest="handoff",
        action="store_false",
        help="one agent only; by default half the clients use a second agent whose requests "
        "all go by HANDOFF",
    )
    p.add_argument("--bundle", default=None, help="model bundle (default: shipped model)")
    p.add_argument("--out", default=None, help="directory for the daemons' logs and summary.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tandem.emulate.chaos import ChaosConfig, run_chaos

    cfg = ChaosConfig(
        requests=args.requests,
        seed=args.seed,
        clients=args.clients,
        rate_per_s=args.rate,
        cloud_kills=args.kills,
        partitions=args.partitions,
        spikes=args.spikes,
        handoff=args.handoff,
        bundle=args.bundle,
    )
    out = Path(args.out) if args.out else None
    summary = run_chaos(cfg, out, lambda m: print(f"-- {m}", flush=True))
    for line in summary.failures:
        print(f"-- FAILED {line}", flush=True)
    s = summary.as_dict()
    print(
        f"-- {s['answered']}/{s['requests']} answered in {s['wall_s']} s; lost {s['lost']}, "
        f"duplicated {s['duplicated']}, gaps {s['gaps']}, mismatched {s['mismatched']}; "
        f"cloud killed {s['cloud_kills']}x, {s['partitions']} partitions, {s['spikes']} spikes; "
        f"{s['handoffs']} by HANDOFF"
    )
    if out is not None:
        (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(s), flush=True)
    return 0 if summary.ok else 1
