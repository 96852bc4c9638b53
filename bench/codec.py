"""Hidden-state codecs on the wire: bytes per request vs how often the output stays identical.

For each held-out input of the default model, the encoder's hidden states go through every
codec (fp32, fp16, int8 with per-row scales; each raw, zstd and gzip) and back, then are decoded
greedily by the same runtime; the output is compared with decoding the untouched fp32 states.
Targets: int8 <= 0.27x fp32 bytes with >= 99 % identical sequences; fp16 >= 99.9 % identical.
The edge's default codec is the smallest one that meets its bar.

    python bench/codec.py [--n 400] [--bundle DIR] [--quick] [--no-results]

Last line: one JSON object with per-codec ``bytes_vs_fp32`` and ``identical``, and ``default``.
The run writes its results page, ``docs/results/codec.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_json_line, print_table  # noqa: E402
from bench.results import ResultsPage, add_results_arguments  # noqa: E402
from tandem import wire  # noqa: E402
from tandem.defaults import bundle_path  # noqa: E402
from tandem.runtime import codec  # noqa: E402
from tandem.runtime.seq2seq import Seq2Seq  # noqa: E402
from tools.verbalizer_data import heldout_set  # noqa: E402

BARS = {"fp16": 0.999, "int8": 0.99}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--n", type=int, default=1000, help="held-out inputs")
    parser.add_argument("--quick", action="store_true", help="200 inputs")
    add_results_arguments(parser)
    args = parser.parse_args()
    n = 200 if args.quick else args.n
    model = Seq2Seq.load(bundle_path(args.bundle))
    examples = heldout_set(n)
    params = [model.params(target=lang, max_new_tokens=200) for _, lang, _ in examples]
    hiddens = [model.encode(model.tokenize(src)) for src, _, _ in examples]
    reference = model.decode_many(list(zip(hiddens, params, strict=True)))
    fp32_bytes = None
    rows, result = [], {}
    for spec in codec.CODEC_SPECS:
        kind, compression = codec.parse_codec_spec(spec)
        total_bytes, restored = 0, []
        for h in hiddens:
            enc = codec.encode(h, kind, compression)
            total_bytes += wire.to_proto(enc).ByteSize()
            restored.append(codec.decode(enc, hidden_size=model.manifest.dims.hidden_size))
        if spec == "fp32":
            fp32_bytes = total_bytes
            ids = reference
        else:
            ids = model.decode_many(list(zip(restored, params, strict=True)))
        identical = sum(a == b for a, b in zip(ids, reference, strict=True)) / n
        ratio = total_bytes / fp32_bytes
        bar = BARS.get(kind.value)
        meets = bar is None or identical >= bar
        result[spec] = {
            "bytes_vs_fp32": round(ratio, 4),
            "identical": identical,
            "meets_bar": meets,
        }
        rows.append([spec, f"{total_bytes / n:.0f}", f"{ratio:.3f}x", f"{identical:.2%}",
                     "-" if bar is None else ("yes" if meets else "NO")])  # fmt: skip
    headers = ["codec", "bytes/request", "vs fp32", "identical to fp32", "meets bar"]
    intro = (
        f"{n} held-out inputs of {model.manifest.name}; hidden size "
        f"{model.manifest.dims.hidden_size}"
    )
    print(intro)
    print_table(headers, rows)
    default = min(
        (s for s in result if result[s]["meets_bar"]), key=lambda s: result[s]["bytes_vs_fp32"]
    )
    print(f"default codec: {default} (the smallest that meets its bar)")
    summary = {"n": n, "codecs": result, "default": default,
               "int8_bytes_vs_fp32": result["int8"]["bytes_vs_fp32"],
               "int8_identical": result["int8"]["identical"],
               "fp16_identical": result["fp16"]["identical"]}  # fmt: skip
    page = ResultsPage("codec", "Results: hidden-state codecs")
    page.text(
        f"{intro}. Each codec's hidden states are decoded by the same runtime and compared "
        "with decoding the untouched fp32 states. Bars: int8 >= 99 % identical (and <= 0.27x "
        "fp32 bytes), fp16 >= 99.9 % identical."
    )
    page.table(headers, rows)
    page.text(f"Default codec: `{default}` (the smallest that meets its bar).")
    page.json(summary)
    page.write(args.results_dir)
    print_json_line(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
