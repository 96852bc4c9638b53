"""``tandem transcribe``: speech to text (or ids) on this machine with a Whisper bundle.

Interface relied on by tools outside the project (keep stable):
``tandem transcribe [--bundle DIR] [--language LANG] [--max-new-tokens N] [--ids] FILE.wav|-``.
With ``-`` it reads one WAV path per line from stdin and prints exactly one output line per
input, in order. ``--ids`` prints the generated token ids, space-separated, after the forced
prompt and without the final EOS (as transformers' Whisper ``generate`` returns them). Audio
longer than the model's window is transcribed window by window; ids and texts are joined.
"""

from __future__ import annotations

import argparse
import sys

from tandem.errors import InputError, TandemError

DEFAULT_MAX_DURATION_S = 600.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe WAV files with a Whisper bundle")
    p.add_argument("audio", help="a WAV file, or '-' to read one WAV path per line from stdin")
    p.add_argument("--bundle", default=None, help="Whisper model bundle directory")
    p.add_argument("--language", default=None, help="language code, e.g. en (default: detected)")
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="upper bound on new tokens per window"
    )
    p.add_argument("--ids", action="store_true", help="print token ids instead of text")
    p.add_argument(
        "--max-duration-s",
        type=float,
        default=DEFAULT_MAX_DURATION_S,
        help=f"refuse longer audio (default {DEFAULT_MAX_DURATION_S:g} s)",
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tandem.defaults import bundle_path
    from tandem.runtime import speech
    from tandem.runtime.options import SessionConfig
    from tandem.runtime.seq2seq import Seq2Seq
    from tandem.runtime.wav import read_wav

    if not args.max_duration_s > 0:
        raise InputError(f"--max-duration-s must be > 0, got {args.max_duration_s:g}")
    model = Seq2Seq.load(bundle_path(args.bundle), SessionConfig(intra_op_threads=args.threads))
    if not model.is_speech:
        raise InputError(
            f"bundle {model.manifest.name!r} is a text model; pass --bundle DIR of a speech "
            "(Whisper) bundle"
        )
    if not args.ids and model.tokenizer is None:
        raise InputError(
            f"bundle {model.manifest.name!r} has no tokenizer (exported from a checkpoint "
            "without tokenizer files); use --ids"
        )
    # Fail fast on bad flags, before any audio is read.
    speech.language_token(model.manifest, args.language)
    speech.max_new_tokens(model.manifest, speech.begin_index(model.manifest), args.max_new_tokens)

    def one(path: str) -> str:
        if not path.strip():
            raise InputError("empty WAV path")
        audio = read_wav(path, max_duration_s=args.max_duration_s)
        out = model.transcribe(audio, args.language, args.max_new_tokens)
        cut = sum(1 for s in out.segments if s.finish != "eos")
        if cut:
            print(
                f"tandem transcribe: warning: {path}: {cut} of {len(out.segments)} decoding "
                "run(s) reached the token limit before their end; the transcript may be cut short",
                file=sys.stderr,
            )
        if args.ids:
            return " ".join(str(t) for t in out.ids)
        return " ".join((out.text or "").split())  # one line, whatever the text holds

    if args.audio != "-":
        print(one(args.audio))
        return 0
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"stdin is not valid UTF-8 (byte {exc.start})") from exc
    failures = 0
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            print(one(line), flush=True)
        except TandemError as exc:
            failures += 1
            print("", flush=True)  # keep one output line per input line
            print(f"tandem transcribe: line {number}: error: {exc}", file=sys.stderr)
    return 1 if failures else 0
