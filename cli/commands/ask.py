"""``tandem ask "text" --target fr``: one request to the running edge agent."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask the running edge agent (streams the answer)")
    p.add_argument("text", help="input text")
    p.add_argument("--target", default=None, help="target language")
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--local-only", action="store_true", help="never send this request's data")
    p.add_argument("--agent", default=None, help="agent address: socket path or host:port")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tandem.edge.client import EdgeClient

    with EdgeClient(args.agent, timeout_s=args.timeout) as client:
        for event in client.stream(
            args.text, args.target, max_new_tokens=args.max_new_tokens, local_only=args.local_only
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
