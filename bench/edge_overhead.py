"""Agent overhead per request: the edge agent over its Unix socket vs the runtime called directly.

What the agent adds — the local API round trip, tokenization in the daemon, observations and
the policy decision, probes, metrics, streaming pieces — must stay small next to decoding. Both
sides decode the same inputs on the same model and threads, locally (the cloud route's cost is
the network's, measured elsewhere); interleaved per input so drift hits both equally.
Target: overhead <= 2 ms or <= 5 % of the direct time, whichever is larger.

    python bench/edge_overhead.py [--quick] [--bundle DIR] [--requests N] [--no-results]

Last line: one JSON object with ``overhead_ms``, ``overhead_frac`` and the medians. The run
writes its results page, ``docs/results/edge_overhead.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from results import ResultsPage, add_results_arguments

from tandem.defaults import bundle_path
from tandem.edge.client import EdgeClient
from tandem.emulate.inputs import sample_inputs
from tandem.runtime.options import SessionConfig
from tandem.runtime.seq2seq import Seq2Seq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="60 requests")
    add_results_arguments(parser)
    args = parser.parse_args()
    n = 60 if args.quick else args.requests
    path = bundle_path(args.bundle)
    session = SessionConfig(intra_op_threads=args.threads, allow_spinning=False)
    direct_model = Seq2Seq.load(path, session)
    languages = sorted(direct_model.manifest.languages)
    inputs = sample_inputs(n, languages, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        # The agent runs as its own process, as on a device: the app is another process.
        sock = Path(tmp) / "edge.sock"
        config = Path(tmp) / "edge.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "bundle": str(path),
                    "socket": str(sock),
                    "session": {"intra_op_threads": args.threads, "allow_spinning": False},
                    "cloud": {"enabled": False},
                    "policy": {"policy": "always_local"},
                }
            )
        )
        agent = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "edge", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
        )
        direct_ms, agent_ms, tokens, mismatches = [], [], 0, 0
        try:
            deadline = time.monotonic() + 60
            while not sock.exists():
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("edge agent did not start")
                time.sleep(0.1)
            with EdgeClient(str(sock)) as client:
                for text, target in inputs[:5]:  # warm-up both paths
                    direct_model.generate(text, target=target)
                    client.ask(text, target)
                for i, (text, target) in enumerate(inputs):
                    order = (0, 1) if i % 2 == 0 else (1, 0)
                    for which in order:
                        start = time.perf_counter()
                        if which == 0:
                            out = direct_model.generate(text, target=target)
                            direct_ms.append((time.perf_counter() - start) * 1000)
                            tokens += len(out.ids)
                        else:
                            answer = client.ask(text, target)
                            agent_ms.append((time.perf_counter() - start) * 1000)
                            mismatches += answer.text != direct_model.detokenize(answer.ids)
        finally:
            agent.terminate()
            agent.wait(timeout=30)
    d_med, a_med = statistics.median(direct_ms), statistics.median(agent_ms)
    d_mean, a_mean = statistics.fmean(direct_ms), statistics.fmean(agent_ms)
    overhead_ms = a_med - d_med
    overhead_frac = overhead_ms / d_med
    budget_ms = max(2.0, 0.05 * d_med)
    print(f"{'path':<22}{'median ms':>12}{'mean ms':>12}")
    print(f"{'runtime directly':<22}{d_med:>12.2f}{d_mean:>12.2f}")
    print(f"{'edge agent (socket)':<22}{a_med:>12.2f}{a_mean:>12.2f}")
    verdict = (
        f"overhead {overhead_ms:.2f} ms per request ({overhead_frac:.1%}); budget "
        f"{budget_ms:.2f} ms -> {'met' if overhead_ms <= budget_ms else 'MISSED'}; "
        f"{n} requests, {tokens / n:.1f} tokens each"
    )
    print(verdict)
    summary = {
        "overhead_ms": round(overhead_ms, 3),
        "overhead_frac": round(overhead_frac, 4),
        "direct_median_ms": round(d_med, 3),
        "agent_median_ms": round(a_med, 3),
        "requests": n,
        "mismatches": mismatches,
        "target_met": overhead_ms <= budget_ms,
    }
    page = ResultsPage("edge_overhead", "Results: edge agent overhead")
    page.text(
        f"The agent as its own process on a Unix socket vs `Seq2Seq.generate` called directly: "
        f"same {n} inputs of the default model, same model, {args.threads} intra-op threads, "
        "interleaved. Target: overhead <= 2 ms or <= 5 % of the direct time, whichever is larger."
    )
    page.table(
        ["path", "median ms", "mean ms"],
        [
            ["runtime directly", f"{d_med:.2f}", f"{d_mean:.2f}"],
            ["edge agent (socket)", f"{a_med:.2f}", f"{a_mean:.2f}"],
        ],
    )
    page.text(verdict[0].upper() + verdict[1:] + ".")
    page.json(summary)
    page.write(args.results_dir)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
