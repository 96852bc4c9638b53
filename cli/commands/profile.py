"""``tandem profile``: measure a bundle's costs on this machine into a profile YAML.

The profile is what the routing policy and the simulator read; its format is documented in
``tandem.runtime.profiler`` and in ``docs/bundle.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure encoder/decoder costs into a profile YAML")
    p.add_argument("--bundle", default=None, help="model bundle directory (default: shipped model)")
    p.add_argument("--out", required=True, help="profile YAML to write")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    p.add_argument("--quick", action="store_true", help="fewer points and repeats")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from tandem.defaults import bundle_path
    from tandem.policy.energy import DEFAULT_POWER_W
    from tandem.runtime.options import SessionConfig
    from tandem.runtime.profiler import measure_profile
    from tandem.runtime.seq2seq import Seq2Seq

    model = Seq2Seq.load(bundle_path(args.bundle), SessionConfig(intra_op_threads=args.threads))
    if args.quick:
        profile = measure_profile(model, (8, 32), (1, 32), (1, 8), repeats=3)
    else:
        profile = measure_profile(model)
    if profile["power_source"] == "default":  # no readable RAPL counters here
        profile = {**profile, "power_w": DEFAULT_POWER_W}
        profile["power_source"] = profile.pop("power_source")  # keep it after power_w
    Path(args.out).write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    per_token = next(d["ms"] for d in profile["decoder_step_ms"] if d["batch"] == 1)
    print(
        f"wrote {args.out}: encoder {profile['encoder_ms'][0]['ms']:.2f}–"
        f"{profile['encoder_ms'][-1]['ms']:.2f} ms, decoder {per_token:.2f} ms/token at batch 1, "
        f"peak RSS {profile['peak_rss_mb']} MB, power {profile['power_w']} W "
        f"({'measured by RAPL' if profile['power_source'] == 'rapl' else 'default: no RAPL'})"
    )
    return 0
