"""Cloud decoder throughput: continuous batching vs one request at a time, same server code.

Why this peer: without batching, a decoder replica serves one sequence per ``session.run`` and
its throughput is flat in the number of clients while their latency grows linearly; continuous
batching is the reason a replica can saturate its cores. The peer is the very same service
with ``scheduler.max_batch: 1`` (queue and all), so the ratio measures batching and nothing
else.

How it measures: each configuration runs a real replica (``tandem cloud serve``) in a child
process on 127.0.0.1, and ``c`` client threads, each with its own gRPC channel, send
fp32 hidden states of 16-token sources back to back; every request is forced to the same
length (``min_new_tokens`` = ``max_new_tokens``), so tokens/s compare like for like. Latency
is from sending a request to receiving its final event. One warm-up request precedes each
server's runs. tokens/s = all streamed tokens / wall time of the run. Both replicas run side by
side and every repeat measures each point in both modes back to back (order alternating);
figures are medians over repeats and ratios medians of per-repeat ratios, so drifts in
background load cancel out of them.

Models: the shipped default model, and MarianMT with opus-mt-en-de's shape (d_model 512, 6+6
layers, vocab 58101) and random weights — the recipe of ``bench/local_decode.py``, built once
into the same cache (needs the ``bench`` extra for torch and transformers).

Targets: speedup >= 3x tokens/s at concurrency 16, and p50 latency at concurrency 16 <= 2x
the single-request latency (both with batching).

    python bench/cloud_throughput.py [--quick] [--model default|random:opus-mt-en-de|DIR ...]

``--quick``: concurrency 1 and 16 on the default model, in well under two minutes. The last
line printed is one JSON object: ``speedup_c16`` (batched tokens/s at concurrency 16 /
one-at-a-time), ``p50_ratio_c16`` (batched p50 latency at concurrency 16 / at concurrency 1)
for the first model, and every model's figures under ``models``. The run writes its results
page, ``docs/results/cloud_throughput.md`` (``--no-results``: none).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import paired_ratio, print_json_line, print_table  # noqa: E402
from bench.results import ResultsPage, add_results_arguments  # noqa: E402

OPUS = "random:opus-mt-en-de"
SOURCE_TOKENS = 16
TARGETS = {"speedup_c16": 3.0, "p50_ratio_c16": 2.0}
MODES = {"batched": 64, "one-at-a-time": 1}
"""Mode -> scheduler.max_batch of the replica."""
HEADERS = ["model", "mode", "clients", "requests", "tokens/s", "p50 ms", "p99 ms"]


def opus_bundle(cache: Path) -> Path:
    """The opus-mt-en-de-shaped random bundle of bench/local_decode.py, exported once."""
    from bench.local_decode import _build_marian, _cache_key
    from tandem.runtime.export import export_hf

    root = cache / _cache_key()
    for name in ("hf", "tandem"):
        done = root / f"{name}.done"
        if done.exists():
            continue
        print(f"building {root / name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if name == "hf":
            _build_marian(root / "hf")
        else:
            export_hf(root / "hf", root / "tandem", overwrite=True)
        done.write_text(f"{time.perf_counter() - start:.1f} s\n")
    return root / "tandem"


def resolve(model: str, cache: Path) -> Path:
    from tandem.defaults import bundle_path

    if model == OPUS:
        return opus_bundle(cache)
    return bundle_path(None if model == "default" else model)


class Replica:
    """``tandem cloud serve`` in a child process, on a free loopback port."""

    def __init__(self, bundle: Path, max_batch: int, threads: int, workdir: Path) -> None:
        config = workdir / f"cloud-{max_batch}.yaml"
        config.write_text(
            "listen: 127.0.0.1:0\n"
            f"session: {{intra_op_threads: {threads}}}\n"
            f"scheduler: {{max_batch: {max_batch}, max_queue: 256}}\n"
            "limits: {max_streams_per_client: 512, default_deadline_s: 600}\n",
            encoding="utf-8",
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "cloud", "serve", "--config", str(config),
             "--bundle", str(bundle)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        line = self._proc.stdout.readline()
        match = re.search(r" on (127\.0\.0\.1:\d+) ", line)
        if not match:
            self._proc.kill()
            raise RuntimeError(f"replica did not start (exit {self._proc.wait()}): {line!r}")
        self.address = match[1]

    def close(self) -> None:
        self._proc.terminate()
        if self._proc.wait(60) != 0:
            raise RuntimeError(f"replica exited with {self._proc.returncode}")


def make_requests(bundle: Path, count: int, tokens: int, seed: int = 0) -> list[Any]:
    """``count`` DecodeRequests of distinct random 16-token sources, forced to ``tokens``."""
    import numpy as np

    from tandem.runtime import codec
    from tandem.runtime.options import SessionConfig
    from tandem.runtime.seq2seq import Seq2Seq
    from tandem.wire import build_decode_request

    model = Seq2Seq.load(bundle, SessionConfig(intra_op_threads=1))
    rng = np.random.default_rng(seed)
    special = {model.manifest.tokens.pad, model.manifest.tokens.eos}
    vocab = model.manifest.dims.vocab_size
    requests = []
    for _ in range(count):
        body = [int(t) for t in rng.integers(0, vocab, size=SOURCE_TOKENS * 2) if t not in special]
        source = [*body[: SOURCE_TOKENS - 1], model.manifest.tokens.eos]
        hidden = codec.encode(model.encode(source), codec.Codec.FP32)
        requests.append(
            dict(
                model_fingerprint=model.fingerprint,
                hidden_states=hidden,
                source_length=len(source),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                forced_first_token=model.manifest.default_forced_first_token,
            )
        )
    return [build_decode_request(request_id="-", **r) for r in requests]


def run_load(address: str, requests: list[Any], concurrency: int, per_client: int) -> dict:
    """``concurrency`` clients, each with its own connection, sending ``per_client`` requests
    back to back. The clients share one asyncio loop in this process: a load generator as
    cheap as possible, since on a small machine it takes CPU from the server it measures."""
    import asyncio

    import grpc

    from tandem.v1 import decoder_pb2, decoder_pb2_grpc

    latencies: list[float] = []
    tokens = 0
    errors: list[str] = []

    async def client(index: int, stub, gate: asyncio.Event) -> None:
        nonlocal tokens
        await gate.wait()
        for i in range(per_client):
            request = decoder_pb2.DecodeRequest()
            request.CopyFrom(requests[(index * per_client + i) % len(requests)])
            request.request_id = str(uuid.uuid4())
            sent = time.perf_counter()
            final = None
            try:
                async for event in stub.Decode(request, timeout=600):
                    if event.WhichOneof("event") == "final":
                        final = event.final
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            latencies.append(time.perf_counter() - sent)
            tokens += final.token_count

    async def main() -> float:
        channels = [grpc.aio.insecure_channel(address) for _ in range(concurrency)]
        for channel in channels:
            await channel.channel_ready()
        gate = asyncio.Event()
        tasks = [
            asyncio.create_task(client(i, decoder_pb2_grpc.DecoderStub(ch), gate))
            for i, ch in enumerate(channels)
        ]
        began = time.perf_counter()
        gate.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - began
        for channel in channels:
            await channel.close()
        return wall

    wall = asyncio.run(main())
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    latencies.sort()
    return {
        "requests": len(latencies),
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] * 1000,
    }


def bench_model(model: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Both replicas run side by side; every repeat runs each (concurrency, mode) once, the
    mode order alternating, so slow drifts in background load hit both modes alike."""
    bundle = resolve(model, args.cache)
    per_client = {c: max(2, 16 // c) for c in args.concurrency}
    requests = make_requests(bundle, 64, args.tokens)
    replicas = {
        mode: Replica(bundle, max_batch, args.threads, workdir) for mode, max_batch in MODES.items()
    }
    runs: dict[str, dict[int, list[dict]]] = {m: {c: [] for c in args.concurrency} for m in MODES}
    try:
        for replica in replicas.values():
            run_load(replica.address, requests, 1, 1)  # warm-up
        for repeat in range(args.repeats):
            for c in args.concurrency:
                order = list(MODES) if repeat % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    runs[mode][c].append(
                        run_load(replicas[mode].address, requests, c, per_client[c])
                    )
    finally:
        for replica in replicas.values():
            replica.close()

    def median(mode: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode][c])

    def series(mode: str, c: int, key: str) -> list[float]:
        return [r[key] for r in runs[mode][c]]

    rows = [
        [model, mode, c, sum(r["requests"] for r in runs[mode][c]),
         median(mode, c, "tokens_per_s"), median(mode, c, "p50_ms"), median(mode, c, "p99_ms")]
        for c in args.concurrency
        for mode in MODES
    ]  # fmt: skip
    print_table(HEADERS, rows)
    summary: dict[str, Any] = {
        "bundle": bundle.name,
        "rows": rows,
        "speedup": {
            c: paired_ratio(
                series("batched", c, "tokens_per_s"), series("one-at-a-time", c, "tokens_per_s")
            )
            for c in args.concurrency
        },
        "p50_ratio": {
            c: paired_ratio(series("batched", c, "p50_ms"), series("batched", 1, "p50_ms"))
            for c in args.concurrency
        },
        "results": {
            mode: {
                c: {k: median(mode, c, k) for k in ("tokens_per_s", "p50_ms", "p99_ms")}
                for c in args.concurrency
            }
            for mode in MODES
        },
    }
    print(
        f"\n{model}: batched/one-at-a-time tokens/s "
        + ", ".join(f"c{c} {v:.2f}x" for c, v in summary["speedup"].items())
        + "; batched p50 vs c1 "
        + ", ".join(f"c{c} {v:.2f}x" for c, v in summary["p50_ratio"].items())
        + f" (medians of {args.repeats} paired repeats)\n",
        flush=True,
    )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 16, default model")
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help=f"'default', '{OPUS}' or a bundle directory; repeatable "
        f"(default: default and {OPUS}; --quick: default)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--repeats", type=int, default=3, help="paired repeats per point")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="server ONNX Runtime intra-op threads (default 1: on a small machine, spinning "
        "worker threads fight the gRPC threads and the load generator for the cores)",
    )
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench" / "local_decode")
    add_results_arguments(parser)
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = [1, 16] if args.quick else [1, 4, 16, 64]
    if 1 not in args.concurrency or 16 not in args.concurrency:
        parser.error("--concurrency must include 1 and 16 (the targets compare them)")
    models = args.model or (["default"] if args.quick else ["default", OPUS])
    began = time.perf_counter()
    from tandem.errors import TandemError

    try:
        with tempfile.TemporaryDirectory() as tmp:
            summaries = {m: bench_model(m, args, Path(tmp)) for m in models}
    except TandemError as exc:  # e.g. the default model is not installed
        print(f"cloud_throughput: error: {exc}", file=sys.stderr)
        return 2
    first = summaries[models[0]]
    result = {
        "speedup_c16": round(first["speedup"][16], 3),
        "p50_ratio_c16": round(first["p50_ratio"][16], 3),
        "model": models[0],
        "targets": TARGETS,
        "meets_targets": first["speedup"][16] >= TARGETS["speedup_c16"]
        and first["p50_ratio"][16] <= TARGETS["p50_ratio_c16"],
        "tokens_per_request": args.tokens,
        "cpu_count": os.cpu_count(),
        "seconds": round(time.perf_counter() - began, 1),
        "models": {
            m: {
                "bundle": s["bundle"],
                "speedup": {str(c): round(v, 3) for c, v in s["speedup"].items()},
                "p50_ratio": {str(c): round(v, 3) for c, v in s["p50_ratio"].items()},
                "results": {
                    mode: {str(c): {k: round(v, 2) for k, v in r.items()} for c, r in by_c.items()}
                    for mode, by_c in s["results"].items()
                },
            }
            for m, s in summaries.items()
        },
    }
    page = ResultsPage("cloud_throughput", "Results: cloud decoder throughput")
    page.text(
        "Two real replicas side by side, continuous batching (`max_batch` 64) and one at a time "
        f"(`max_batch` 1); fp32 hidden states of {SOURCE_TOKENS}-token sources, {args.tokens} "
        f"tokens per request, `--threads {args.threads}`; medians of {args.repeats} paired "
        "repeats. Targets: `speedup_c16 >= 3`, `p50_ratio_c16 <= 2`."
    )
    page.table(HEADERS, [row for s in summaries.values() for row in s["rows"]])
    many = [c for c in args.concurrency if c != 1]
    page.table(
        ["model", *(f"speedup c{c}" for c in many), *(f"p50 c{c} / c1" for c in many)],
        [[m, *(f"{s['speedup'][c]:.2f}x" for c in many),
          *(f"{s['p50_ratio'][c]:.2f}x" for c in many)]
         for m, s in summaries.items()],
    )  # fmt: skip
    page.json(result)
    page.write(args.results_dir)
    print_json_line(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
