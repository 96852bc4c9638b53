"""``tandem export``: a local Hugging Face checkpoint → a Tandem model bundle."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a Hugging Face seq2seq checkpoint to a bundle")
    p.add_argument("--hf", required=True, help="local Hugging Face checkpoint directory")
    p.add_argument("--out", required=True, help="output bundle directory")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantization (MatMul)")
    p.add_argument("--name", default=None, help="bundle name (default: checkpoint dir name)")
    p.add_argument("--input-pattern", default=None, help="regex of in-domain inputs (optional)")
    p.add_argument("--input-description", default=None, help="human words for that domain")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tandem.runtime.export import export_hf

    manifest = export_hf(
        args.hf,
        args.out,
        int8=args.int8,
        name=args.name,
        overwrite=args.overwrite,
        input_pattern=args.input_pattern,
        input_description=args.input_description,
    )
    langs = ", ".join(manifest.languages) or "none"
    print(
        f"exported {manifest.architecture} bundle {manifest.name!r} to {args.out} "
        f"(quantization {manifest.quantization}, languages: {langs})\n"
        f"fingerprint {manifest.fingerprint}"
    )
    return 0
