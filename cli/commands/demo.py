"""``tandem demo``: the main job (see ``tandem.cli.demo``)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="cloud + edge on loopback; kill the cloud halfway; nothing is lost"
    )
    p.add_argument("--requests", type=int, default=24, help="number of requests (default 24)")
    p.add_argument("--bundle", default=None, help="model bundle (default: shipped model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="end with one JSON summary line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tandem.cli.demo import run_demo

    if args.requests < 3:
        from tandem.errors import ConfigError

        raise ConfigError("--requests must be at least 3 (up, down, back)")

    def report(r) -> None:
        via = r.route + (f" after {'+'.join(r.fallbacks)}" if r.fallbacks else "")
        check = "ok" if r.matches else "MISMATCH" if r.answered else f"UNANSWERED: {r.error}"
        print(
            f"[{r.index:3d}] {r.phase:10s} {via:34s} ({r.reason:13s}) {r.total_ms:7.1f} ms "
            f"{check:3s}  {r.text!r} -> {r.target}: {r.output}",
            flush=True,
        )

    summary = run_demo(
        args.requests, args.bundle, args.seed, report, lambda m: print(f"-- {m}", flush=True)
    )
    s = summary.as_dict()
    print(
        f"-- {s['answered']}/{s['requests']} answered ({s['cloud']} by the cloud, {s['local']} "
        f"locally), {s['fallbacks']} fell back, {s['mismatches']} differed from the local "
        f"reference, cloud killed {s['cloud_kills']}x"
    )
    if args.json:
        print(json.dumps(s))
    ok = s["answered"] == s["requests"] and s["mismatches"] == 0
    return 0 if ok else 1
