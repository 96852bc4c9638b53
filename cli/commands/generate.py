"""``tandem generate``: run a bundle on this machine, one input per line.

Interface relied on by tools outside the project (keep stable):
``tandem generate [--bundle DIR] [--target LANG] [--max-new-tokens N] [--min-new-tokens N]
[--ids] TEXT|-``. With ``-`` it reads one input per line from stdin and prints exactly one output
line per input, in order. ``--ids`` makes both sides space-separated token ids; output ids are
the generated tokens without the decoder start token.
"""

from __future__ import annotations

import argparse
import re
import sys

from tandem.errors import InputError, TandemError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate on this machine from text or token ids")
    p.add_argument("text", help="input text, or '-' to read one input per line from stdin")
    p.add_argument("--bundle", default=None, help="model bundle directory (default: shipped model)")
    p.add_argument("--target", default=None, help="target language (e.g. fr)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="upper bound on new tokens")
    p.add_argument("--min-new-tokens", type=int, default=0, help="suppress EOS until N tokens")
    p.add_argument("--ids", action="store_true", help="inputs and outputs are token ids")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    p.set_defaults(func=run)


def _parse_ids(line: str) -> list[int]:
    try:
        return [int(tok) for tok in line.split()]
    except ValueError as exc:
        raise InputError(f"--ids input must be space-separated integers: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from tandem.defaults import bundle_path
    from tandem.runtime.options import SessionConfig
    from tandem.runtime.seq2seq import Seq2Seq

    model = Seq2Seq.load(bundle_path(args.bundle), SessionConfig(intra_op_threads=args.threads))
    model.params(args.target, args.max_new_tokens, args.min_new_tokens)  # fail fast on bad flags
    pattern = model.manifest.input_pattern
    domain = re.compile(pattern) if pattern and not args.ids else None

    def one(line: str) -> str:
        if domain is not None and not domain.fullmatch(line):
            print(
                f"tandem generate: warning: input {line[:40]!r} is outside the model's domain "
                f"({model.manifest.input_description or pattern}); output may be meaningless",
                file=sys.stderr,
            )
        source = _parse_ids(line) if args.ids else line
        out = model.generate(source, args.target, args.max_new_tokens, args.min_new_tokens)
        if args.ids or out.text is None:
            return " ".join(str(t) for t in out.ids)
        return out.text

    if args.text != "-":
        print(one(args.text))
        return 0
    failures = 0
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"stdin is not valid UTF-8 (byte {exc.start})") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            print(one(line), flush=True)
        except TandemError as exc:
            failures += 1
            print("", flush=True)  # keep one output line per input line
            print(f"tandem generate: line {number}: error: {exc}", file=sys.stderr)
    return 1 if failures else 0
