"""``tandem ask "text" --target fr``, or ``tandem ask --audio FILE.wav``: one request to the
running edge agent (an agent of a speech model takes audio and prints the transcript)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask the running edge agent (streams the answer)")
    p.add_argument("text", nargs="?", default=None, help="input text (or --audio)")
    p.add_argument("--target", default=None, help="target language")
    p.add_argument("--audio", default=None, help="a WAV file to transcribe instead of text")
    p.add_argument(
        "--language", default=None, help="spoken language of --audio (default: detected)"
    )
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--local-only", action="store_true", help="never send this request's data")
    p.add_argument("--agent", default=None, help="agent address: socket path or host:port")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tandem.edge.client import EdgeClient
    from tandem.errors import InputError

    if (args.text is None) == (args.audio is None):
        raise InputError("give a text or --audio FILE.wav, not both")
    if args.max_new_tokens < 0:
        raise InputError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    audio = None
    if args.audio is not None:
        try:
            with open(args.audio, "rb") as f:
                audio = f.read()
        except OSError as exc:
            raise InputError(f"{args.audio}: cannot be read: {exc.strerror or exc}") from None
    with EdgeClient(args.agent, timeout_s=args.timeout) as client:
        for event in client.stream(
            args.text or "",
            args.target,
            max_new_tokens=args.max_new_tokens,
            local_only=args.local_only,
            audio=audio,
            language=args.language,
        ):
            if event.WhichOneof("event") == "piece":
                sys.stdout.write(event.piece.text)
                sys.stdout.flush()
            else:
                f = event.final
                fallbacks = f" after {', '.join(f.fallbacks)}" if f.fallbacks else ""
                print(
                    f"\n[{f.route} ({f.reason}){fallbacks}; encode {f.encode_ms:.1f} ms, "
                    f"first token {f.first_token_ms:.1f} ms, total {f.total_ms:.1f} ms]",
                    file=sys.stderr,
                )
    return 0
