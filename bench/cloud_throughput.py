"""Cloud decoder throughput: the service against its own floor, and batching against none.

Two questions, each answered against a peer measured in the same run:

- **How close does the service come to the model's own batched cost?** The *floor* is the
  same requests (same hidden states, same forced lengths, same arrival pattern) decoded by
  ``DecodeBatch`` directly, with no gRPC, codec, validation or scheduler around it, in a child
  process configured like the replica (the same ``cloud.yaml``'s session settings, the same
  warm-up, the same cores, the model on a thread of its own as the engine's). Each client of
  the floor sends its next request the moment its previous one ends, as a gRPC client does.
  ``floor_p50_ratio`` = service p50 / floor p50 and ``floor_throughput_ratio`` = service
  tokens/s / floor tokens/s: everything between 1.0 and the service's figure is serving
  overhead (gRPC, codec, validation, scheduling, token messages), not the model.
  ``floor_cpu_ratio`` = the replica's CPU seconds per token / the floor's: the same overhead
  in CPU, which background load hardly moves. Wall-clock ratios need a quiet machine: on a
  busy one the kernel shares a core between threads, and the replica (dozens of threads)
  then gets more of it than the single-threaded floor, which flatters the service.
- **Does continuous batching pay?** The peer is the very same service with
  ``scheduler.max_batch: 1`` (queue and all): without batching a replica's throughput is flat
  in its number of clients while their latency grows linearly.

How it measures: each replica is ``tandem cloud serve`` in a child process on 127.0.0.1; the
load generator is a child process of its own (``c`` clients on one asyncio loop with
``grpc.aio``, each with its own connection, sending back to back), and reports its own CPU
use. On a machine with two or more usable cores the load generator gets the last core and the
replicas and the floor the others (``os.sched_setaffinity``), so the load generator never takes
CPU from what it measures; with one core they share it (the page says so). Every request
carries fp32 hidden states of a 16-token source and is forced to the same length
(``min_new_tokens`` = ``max_new_tokens``), so tokens/s compare like for like. Latency is from
sending a request to receiving its final event. tokens/s = all generated tokens / wall time
of the run. Each repeat measures every point on the floor and on both replicas back to back
(order rotating); figures are medians over repeats and ratios medians of per-repeat ratios,
so drifts in background load cancel out of them.

Where the time goes: the batched replica exports per-stage timers
(``tandem_cloud_stage_seconds``: validate, codec, queue, join, step, emit, send); their sums
over the concurrency-16 runs are tabled per request, beside the client's latency (its excess
over the handler's own time is gRPC receive and send outside the handler). ``--profile``
also samples one extra concurrency-16 run of the batched replica with py-spy (if installed)
and tables where its threads spent their CPU.

Models: the shipped default model, and MarianMT with opus-mt-en-de's shape (d_model 512, 6+6
layers, vocab 58101) and random weights — the recipe of ``bench/local_decode.py``, built once
into the same cache (needs the ``bench`` extra for torch and transformers).

Targets (a quiet machine): ``floor_p50_ratio_c16 <= 1.3``, ``floor_p50_ratio_c1 <= 1.25``,
``floor_throughput_ratio_c16 >= 0.8``, and ``speedup_c16 >= 3`` on every model run.

    python bench/cloud_throughput.py [--quick] [--model default|random:opus-mt-en-de|DIR ...]

``--per-client N``: requests each client sends per run (default ``max(2, 16 / clients)``: at
concurrency 16, two waves, the first of which arrives together as the floor's does; 16 is the
steady state, where a wave's requests arrive over several milliseconds and join in several
runs).

``--quick``: concurrency 1 and 16 on the default model, in well under two minutes. The last
line printed is one JSON object: ``speedup_c16`` (batched tokens/s at concurrency 16 /
one-at-a-time), ``p50_ratio_c16`` (batched p50 latency at concurrency 16 / at concurrency 1),
``floor_p50_ratio_c1``, ``floor_p50_ratio_c16``, ``floor_throughput_ratio_c16`` and
``floor_cpu_ratio_c16`` for the first model, ``background_cores`` (the CPU other work used
during the run, in cores: wall-clock figures are evidence only when it is near 0), and every model's figures under ``models``. The run writes its results page,
``docs/results/cloud_throughput.md`` (``--no-results``: none).
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
import os
import pickle
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import Worker, paired_ratio, print_json_line, print_table, serve  # noqa: E402
from bench.results import ResultsPage, add_results_arguments  # noqa: E402

OPUS = "random:opus-mt-en-de"
SOURCE_TOKENS = 16
TARGETS = {
    "speedup_c16": 3.0,
    "floor_p50_ratio_c16": 1.3,
    "floor_p50_ratio_c1": 1.25,
    "floor_throughput_ratio_c16": 0.8,
}
"""speedup_c16 at least, the floor p50 ratios at most, the floor throughput ratio at least."""
MODES = {"batched": 64, "one-at-a-time": 1}
"""Mode -> scheduler.max_batch of the replica."""
FLOOR = "floor"
"""The same requests through ``DecodeBatch`` directly (no service)."""
HEADERS = ["model", "mode", "clients", "requests", "tokens/s", "p50 ms", "p99 ms", "load-gen CPU"]
STAGES = ("validate", "codec", "queue", "join", "step", "emit", "send")
"""The replica's stage timers (``tandem_cloud_stage_seconds``), in request order."""


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


def split_cores() -> tuple[list[int] | None, list[int] | None]:
    """(replica cores, load-generator cores): the last usable core for the load generator,
    the rest for what it measures; (None, None) where that is impossible (one core, or no
    ``sched_setaffinity``), and everything shares every core."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    return usable[:-1], usable[-1:]


def _pin(cores: list[int] | None) -> Any:
    """A ``preexec_fn`` pinning a child (and every thread it starts) to ``cores``."""
    return None if cores is None else functools.partial(os.sched_setaffinity, 0, cores)


def write_config(workdir: Path, max_batch: int, threads: int) -> Path:
    """The replica's cloud.yaml; the floor reads the same file for its session settings."""
    config = workdir / f"cloud-{max_batch}.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "metrics_listen: 127.0.0.1:0\n"
        f"session: {{intra_op_threads: {threads}}}\n"
        f"scheduler: {{max_batch: {max_batch}, max_queue: 256}}\n"
        "limits: {max_streams_per_client: 512, default_deadline_s: 600}\n",
        encoding="utf-8",
    )
    return config


class Replica:
    """``tandem cloud serve`` in a child process, on a free loopback port."""

    def __init__(self, bundle: Path, config: Path, cores: list[int] | None) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "cloud", "serve", "--config", str(config),
             "--bundle", str(bundle)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_pin(cores),
        )  # fmt: skip
        line = self._proc.stdout.readline()
        match = re.search(r" on (127\.0\.0\.1:\d+) .*metrics (127\.0\.0\.1:\d+)", line)
        if not match:
            self._proc.kill()
            raise RuntimeError(f"replica did not start (exit {self._proc.wait()}): {line!r}")
        self.address, self.metrics_address = match[1], match[2]
        self.pid = self._proc.pid

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the replica has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stages(self) -> dict[str, tuple[float, int]]:
        """Stage -> (seconds, count) summed since start, from the replica's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=10) as r:
            text = r.read().decode()
        found: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
        for family in text_string_to_metric_families(text):
            if family.name not in ("tandem_cloud_stage_seconds", "tandem_cloud_request_seconds"):
                continue
            for sample in family.samples:
                stage = sample.labels.get("stage", "handler")
                if sample.name.endswith("_sum"):
                    found[stage][0] += sample.value
                elif sample.name.endswith("_count"):
                    found[stage][1] += int(sample.value)
        return {k: (v[0], v[1]) for k, v in found.items()}

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


def _summary(latencies: list[float], tokens: int, wall: float, cpu_s: float) -> dict:
    latencies = sorted(latencies)
    return {
        "requests": len(latencies),
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] * 1000,
        "latency_sum_s": sum(latencies),
        "wall_s": wall,
        "cpu_share": cpu_s / wall,
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_load(address: str, requests: list[Any], concurrency: int, per_client: int) -> dict:
    """``concurrency`` clients, each with its own connection, sending ``per_client`` requests
    back to back, on one asyncio loop (``grpc.aio``): a load generator as cheap as Python
    gets. ``cpu_share``: this process's CPU time over the run's wall time (1.0 = one core)."""
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

    async def main() -> tuple[float, float]:
        channels = [grpc.aio.insecure_channel(address) for _ in range(concurrency)]
        for channel in channels:
            await channel.channel_ready()
        gate = asyncio.Event()
        tasks = [
            asyncio.create_task(client(i, decoder_pb2_grpc.DecoderStub(ch), gate))
            for i, ch in enumerate(channels)
        ]
        cpu = _cpu_s()
        began = time.perf_counter()
        gate.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - began
        cpu = _cpu_s() - cpu
        for channel in channels:
            await channel.close()
        return wall, cpu

    wall, cpu = asyncio.run(main())
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return _summary(latencies, tokens, wall, cpu)


def run_floor(model: Any, jobs: list[Any], concurrency: int, per_client: int) -> dict:
    """The same closed loop as ``run_load``, through ``DecodeBatch`` alone: client ``i``'s
    ``k``-th request is ``jobs[(i * per_client + k) % len(jobs)]``; all clients start at
    once, and a client's next request joins the batch at the iteration after its previous
    one ended, as the engine would admit it (joins, then the batched step). Runs on a thread
    of its own, as the engine does. ``cpu_share`` is the floor process's CPU over wall."""
    from tandem.runtime.decoding import FINISH_LENGTH

    out: dict = {}

    def loop() -> None:
        try:
            out.update(closed_loop())
        except Exception as exc:  # re-raised in the caller's thread
            out["error"] = exc

    def closed_loop() -> dict:
        batch = model.new_batch()
        keys = itertools.count()
        sent_count = [0] * concurrency
        pending: dict[int, tuple[int, float]] = {}  # key -> (client, sent)
        joins: list = []
        latencies: list[float] = []
        tokens = 0

        def submit(client: int, now: float) -> None:
            job = jobs[(client * per_client + sent_count[client]) % len(jobs)]
            sent_count[client] += 1
            key = next(keys)
            pending[key] = (client, now)
            joins.append((key, job.hidden, job.params))

        cpu = _cpu_s()
        began = time.perf_counter()
        for client in range(concurrency):
            submit(client, began)
        join_s = step_s = 0.0
        iterations = joined = 0
        while pending:
            admitted, joins[:] = list(joins), []
            t0 = time.perf_counter()
            results = batch.add_many(admitted) if admitted else []
            t1 = time.perf_counter()
            if len(batch):
                results += batch.step()
            now = time.perf_counter()
            iterations += 1
            joined += 1 if admitted else 0
            join_s += t1 - t0
            step_s += now - t1
            for result in results:
                if result.finish is None:
                    continue
                client, sent = pending.pop(result.key)
                latencies.append(now - sent)
                tokens += result.index + (1 if result.finish == FINISH_LENGTH else 0)
                if sent_count[client] < per_client:
                    submit(client, now)
        wall = time.perf_counter() - began
        timers = {"join": (join_s, joined), "step": (step_s, iterations)}
        return {**_summary(latencies, tokens, wall, _cpu_s() - cpu), "stages": timers}

    thread = threading.Thread(target=loop, name="floor")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out


def worker(kind: str, requests_path: Path, bundle: Path, config: Path) -> None:
    """A child process: ``load`` (the load generator) or ``floor`` (DecodeBatch alone)."""
    from tandem.v1 import decoder_pb2

    requests = []
    for data in pickle.loads(requests_path.read_bytes()):
        request = decoder_pb2.DecodeRequest()
        request.ParseFromString(data)
        requests.append(request)
    if kind == "load":
        serve(lambda q: run_load(q["address"], requests, q["concurrency"], q["per_client"]))
        return
    from tandem.cloud.config import load_cloud_config
    from tandem.cloud.validation import ServedModel, validate_request
    from tandem.runtime.seq2seq import Seq2Seq

    session = load_cloud_config(config).session
    model = Seq2Seq.load(bundle, session)
    model.warm_up()  # as the replica does before it serves
    served = ServedModel.from_manifest(model.manifest, model.fingerprint)
    jobs = [validate_request(r, {model.fingerprint: served}) for r in requests]
    serve(lambda q: run_floor(model, jobs, q["concurrency"], q["per_client"]))


class Profile:
    """Where one process's CPU goes while ``stop`` is pending: each thread's CPU time (from
    ``/proc``, native gRPC and ONNX Runtime threads included), and py-spy samples of the
    thread holding the GIL (``--gil``: Python's own work, which all threads share)."""

    def __init__(self, spy: str, pid: int, out: Path, cores: list[int] | None) -> None:
        self.out = out
        self.pid = pid
        self._proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--format", "raw", "--threads", "--gil",
             "--nonblocking", "--nolineno", "--rate", "250", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_pin(cores),
        )  # fmt: skip
        time.sleep(1.0)  # py-spy attaches
        self._cpu = thread_cpu(pid)
        self._began = time.perf_counter()

    def stop(self) -> dict[str, Any] | None:
        wall = time.perf_counter() - self._began
        cpu = thread_cpu(self.pid)
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return None
        if not self.out.exists():
            return None
        summary = summarize_profile(self.out)
        names = summary.pop("names")
        used: collections.Counter[str] = collections.Counter()
        for tid, (comm, seconds) in cpu.items():
            spent = seconds - self._cpu.get(tid, (comm, 0.0))[1]
            used[_kind(names.get(tid, f"{comm} (native)"))] += spent
        summary["thread_cpu"] = [(name, s / wall) for name, s in used.most_common() if s > 0]
        return summary


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (its name in the kernel, CPU seconds so far), from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm, _, rest = (task / "stat").read_text().partition("(")[2].rpartition(")")
        except OSError:
            continue  # the thread ended
        fields = rest.split()
        found[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return found


def _kind(thread: str) -> str:
    """Threads of one kind pooled: ``lane-decode_3`` -> ``lane-decode``."""
    return re.sub(r"[-_ ]?\d+$", "", thread.strip()) or "?"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Collapsed py-spy stacks (``--threads``) -> the functions holding the GIL.

    A stack's first frame names its thread (``thread (TID): NAME``); its last is where the
    sample landed (self time). Threads of one kind are pooled.
    """
    names: dict[int, str] = {}
    leaves: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        match = re.match(r"thread \((?:0x)?(\w+)\)(?:: (.*))?", frames[0].strip('"'))
        if match:
            tid = int(match[1], 16 if frames[0].startswith("thread (0x") else 10)
            names[tid] = match[2] or str(tid)
            thread = _kind(names[tid])
            frames = frames[1:]
        else:
            thread = "?"
        if not frames:
            continue
        leaf = re.sub(r" \((?:.*/)?([^/()]+)\)$", r" (\1)", frames[-1])
        leaves[(thread, leaf)] += int(count)
        total += int(count)
    return {
        "samples": total,
        "names": names,
        "functions": [(t, f, n) for (t, f), n in leaves.most_common(top)],
    }


def bench_model(model: str, args: argparse.Namespace, workdir: Path) -> dict:
    """The floor and both replicas side by side; every repeat runs each (concurrency, system)
    once, in an order rotating over repeats, so slow drifts in background load hit all alike."""
    bundle = resolve(model, args.cache)
    per_client = {c: args.per_client or max(2, 16 // c) for c in args.concurrency}
    requests = make_requests(bundle, 64, args.tokens)
    requests_path = workdir / "requests.pickle"
    requests_path.write_bytes(pickle.dumps([r.SerializeToString() for r in requests]))
    replica_cores, load_cores = args.cores
    configs = {mode: write_config(workdir, mb, args.threads) for mode, mb in MODES.items()}
    systems = [FLOOR, *MODES]
    runs: dict[str, dict[int, list[dict]]] = {s: {c: [] for c in args.concurrency} for s in systems}
    stage_runs: list[dict[str, Any]] = []
    profile = None
    replicas: dict[str, Replica] = {}
    workers: dict[str, Worker] = {}
    try:
        for mode in MODES:
            replicas[mode] = Replica(bundle, configs[mode], replica_cores)
        argv = [__file__, "--worker", "KIND", str(requests_path), str(bundle)]
        for kind, cores in (("load", load_cores), (FLOOR, replica_cores)):
            argv[2] = kind
            workers[kind] = Worker([*argv, str(configs["batched"])], cores=cores)
        load = workers["load"]
        for replica in replicas.values():  # warm-up
            load.call({"address": replica.address, "concurrency": 1, "per_client": 1})
        workers[FLOOR].call({"concurrency": 1, "per_client": 1})
        for repeat in range(args.repeats):
            for c in args.concurrency:
                shift = repeat % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    query = {"concurrency": c, "per_client": per_client[c]}
                    if system == FLOOR:
                        runs[system][c].append(workers[FLOOR].call(query))
                        continue
                    replica = replicas[system]
                    before = (replica.cpu_s(), replica.stages() if c == 16 else None)
                    result = load.call({**query, "address": replica.address})
                    result["replica_cpu_share"] = (replica.cpu_s() - before[0]) / result["wall_s"]
                    if before[1] is not None and system == "batched":
                        after = replica.stages()
                        stage_runs.append(
                            {
                                "stages": {
                                    k: (v[0] - before[1].get(k, (0, 0))[0], v[1] - before[1].get(k, (0, 0))[1])
                                    for k, v in after.items()
                                },
                                "result": result,
                            }
                        )  # fmt: skip
                    runs[system][c].append(result)
        spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if args.profile and spy:
            sampler = Profile(spy, replicas["batched"].pid, workdir / "profile.txt", load_cores)
            load.call({"address": replicas["batched"].address, "concurrency": 16,
                       "per_client": 40})  # fmt: skip
            profile = sampler.stop()
    finally:
        for replica in replicas.values():
            replica.close()
        for w in workers.values():
            w.close()

    def median(system: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[system][c])

    def series(system: str, c: int, key: str) -> list[float]:
        return [r[key] for r in runs[system][c]]

    rows = [
        [model, system, c, sum(r["requests"] for r in runs[system][c]),
         median(system, c, "tokens_per_s"), median(system, c, "p50_ms"), median(system, c, "p99_ms"),
         "—" if system == FLOOR else f"{median(system, c, 'cpu_share'):.0%}"]
        for c in args.concurrency
        for system in systems
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
        "floor_p50_ratio": {
            c: paired_ratio(series("batched", c, "p50_ms"), series(FLOOR, c, "p50_ms"))
            for c in args.concurrency
        },
        "floor_throughput_ratio": {
            c: paired_ratio(series("batched", c, "tokens_per_s"), series(FLOOR, c, "tokens_per_s"))
            for c in args.concurrency
        },
        "floor_cpu_ratio": {
            c: paired_ratio(
                [r["replica_cpu_share"] * r["wall_s"] / r["tokens"] for r in runs["batched"][c]],
                [r["cpu_share"] * r["wall_s"] / r["tokens"] for r in runs[FLOOR][c]],
            )
            for c in args.concurrency
        },
        "load_generator_cpu": {c: median("batched", c, "cpu_share") for c in args.concurrency},
        "replica_cpu": {c: median("batched", c, "replica_cpu_share") for c in args.concurrency},
        "results": {
            system: {
                c: {k: median(system, c, k) for k in ("tokens_per_s", "p50_ms", "p99_ms")}
                for c in args.concurrency
            }
            for system in systems
        },
        "stages": stage_table(stage_runs, runs[FLOOR][16]),
        "profile": profile,
    }
    print(
        f"\n{model}: service/floor p50 "
        + ", ".join(f"c{c} {v:.2f}x" for c, v in summary["floor_p50_ratio"].items())
        + "; service/floor tokens/s "
        + ", ".join(f"c{c} {v:.2f}x" for c, v in summary["floor_throughput_ratio"].items())
        + "; batched/one-at-a-time tokens/s "
        + ", ".join(f"c{c} {v:.2f}x" for c, v in summary["speedup"].items())
        + f" (medians of {args.repeats} paired repeats; load average "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
        + ")\n",
        flush=True,
    )
    return summary


def stage_table(stage_runs: list[dict[str, Any]], floor_runs: list[dict]) -> list[list[Any]]:
    """The replica's stage timers over the batched concurrency-16 runs, beside the floor's.

    Rows: stage, what one observation is, observations, mean ms per observation, and the
    stage's total as a share of the runs' wall time (for engine stages: how busy the engine
    thread was with it; the floor's engine is busy all the time by construction).
    """
    if not stage_runs:
        return []
    wall = sum(r["result"]["wall_s"] for r in stage_runs)
    requests = sum(r["result"]["requests"] for r in stage_runs)
    client_s = sum(r["result"]["latency_sum_s"] for r in stage_runs)
    total: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for r in stage_runs:
        for stage, (seconds, count) in r["stages"].items():
            total[stage][0] += seconds
            total[stage][1] += count
    handler_s = total["handler"][0]

    def row(name: str, what: str, seconds: float, count: int, share: bool = True) -> list:
        mean = seconds / count * 1000 if count else 0.0
        return [name, what, count, mean, f"{seconds / wall:.0%}" if share else "—"]

    rows = [
        row("client latency (load generator)", "request", client_s, requests, False),
        row("handler (arrival to last event)", "request", handler_s, total["handler"][1], False),
        row("outside the handler (gRPC receive and send)", "request", client_s - handler_s,
            requests, False),
    ]  # fmt: skip
    what = {
        "validate": "request",
        "codec": "request",
        "queue": "request",
        "join": "iteration with joins",
        "step": "iteration",
        "emit": "iteration",
        "send": "message",
    }
    busy = 0.0
    for stage in STAGES:
        seconds, count = total.get(stage, (0.0, 0))
        rows.append(row(stage, what[stage], seconds, count, stage != "queue"))
        busy += seconds if stage in ("join", "step", "emit") else 0.0
    rows.append(
        ["engine idle (waiting for work)", "—", "—", "—", f"{max(0.0, 1 - busy / wall):.0%}"]
    )
    floor_wall = sum(r["wall_s"] for r in floor_runs)
    for stage in ("join", "step"):
        seconds = sum(r["stages"][stage][0] for r in floor_runs)
        count = sum(r["stages"][stage][1] for r in floor_runs)
        mean = seconds / count * 1000 if count else 0.0
        rows.append([f"floor: {stage}", what[stage], count, mean, f"{seconds / floor_wall:.0%}"])
    return rows


def machine_cpu_s() -> list[float]:
    """CPU seconds each core spent busy since boot (``/proc/stat``), or [] off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return []
    tick = os.sysconf("SC_CLK_TCK")
    busy = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(v) for v in fields]
            busy[int(name[3:])] = (sum(values[:8]) - values[3] - values[4]) / tick  # not idle
    return [busy[i] for i in sorted(busy)]


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that ended (replicas, workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def background_cores(before: tuple[list[float], float], wall_s: float, cores: tuple) -> float:
    """Cores' worth of CPU that other work used during the run: the machine's busy time less
    this benchmark's own (its children included), over the wall time. Wall-clock ratios are
    evidence only when this is near 0."""
    machine = machine_cpu_s()
    if not machine or not before[0]:
        return float("nan")
    used = sum(machine) - sum(before[0])
    return max(0.0, (used - (own_cpu_s() - before[1])) / wall_s)


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
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="paired repeats per point (default 3; --quick: 7, its runs being short: two "
        "waves of 16 requests at concurrency 16, which one stall of the host moves)",
    )
    parser.add_argument(
        "--per-client",
        type=int,
        default=None,
        help="requests each client sends per run (default: max(2, 16 / clients)); at "
        "concurrency 16 the default is two waves that start together, 16 the steady state",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="server ONNX Runtime intra-op threads (default 1: on a small machine, spinning "
        "worker threads fight the gRPC threads and the load generator for the cores)",
    )
    parser.add_argument(
        "--shared-cores",
        action="store_true",
        help="do not pin: the load generator shares every core with the replicas",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample one extra concurrency-16 run of the batched replica with py-spy",
    )
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench" / "local_decode")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    add_results_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        kind, requests_path, bundle, config = args.worker
        worker(kind, Path(requests_path), Path(bundle), Path(config))
        return 0
    if args.repeats is None:
        args.repeats = 7 if args.quick else 3
    if args.concurrency is None:
        args.concurrency = [1, 16] if args.quick else [1, 4, 16, 64]
    if 1 not in args.concurrency or 16 not in args.concurrency:
        parser.error("--concurrency must include 1 and 16 (the targets compare them)")
    args.cores = (None, None) if args.shared_cores else split_cores()
    models = args.model or (["default"] if args.quick else ["default", OPUS])
    began = time.perf_counter()
    load_before = os.getloadavg()
    cpu_before = machine_cpu_s(), own_cpu_s()
    from tandem.errors import TandemError

    try:
        with tempfile.TemporaryDirectory() as tmp:
            summaries = {m: bench_model(m, args, Path(tmp)) for m in models}
    except TandemError as exc:  # e.g. the default model is not installed
        print(f"cloud_throughput: error: {exc}", file=sys.stderr)
        return 2
    first = summaries[models[0]]
    figures = {
        "speedup_c16": first["speedup"][16],
        "floor_p50_ratio_c16": first["floor_p50_ratio"][16],
        "floor_p50_ratio_c1": first["floor_p50_ratio"][1],
        "floor_throughput_ratio_c16": first["floor_throughput_ratio"][16],
    }
    meets = all(
        s["speedup"][16] >= TARGETS["speedup_c16"]
        and s["floor_p50_ratio"][16] <= TARGETS["floor_p50_ratio_c16"]
        and s["floor_p50_ratio"][1] <= TARGETS["floor_p50_ratio_c1"]
        and s["floor_throughput_ratio"][16] >= TARGETS["floor_throughput_ratio_c16"]
        for s in summaries.values()
    )
    replica_cores, load_cores = args.cores
    cores = (
        {"replica_and_floor": replica_cores, "load_generator": load_cores}
        if replica_cores is not None
        else "shared"
    )
    result = {
        "speedup_c16": round(figures["speedup_c16"], 3),
        "p50_ratio_c16": round(first["p50_ratio"][16], 3),
        "floor_p50_ratio_c1": round(figures["floor_p50_ratio_c1"], 3),
        "floor_p50_ratio_c16": round(figures["floor_p50_ratio_c16"], 3),
        "floor_throughput_ratio_c16": round(figures["floor_throughput_ratio_c16"], 3),
        "floor_cpu_ratio_c16": round(first["floor_cpu_ratio"][16], 3),
        "model": models[0],
        "targets": TARGETS,
        "meets_targets": meets,
        "tokens_per_request": args.tokens,
        "cpu_count": os.cpu_count(),
        "cores": cores,
        "load_generator": "grpc.aio (Python asyncio), its own process",
        "load_average_start": [round(x, 2) for x in load_before],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "background_cores": round(
            background_cores(cpu_before, time.perf_counter() - began, args.cores), 2
        ),
        "seconds": round(time.perf_counter() - began, 1),
        "models": {
            m: {
                "bundle": s["bundle"],
                "speedup": {str(c): round(v, 3) for c, v in s["speedup"].items()},
                "p50_ratio": {str(c): round(v, 3) for c, v in s["p50_ratio"].items()},
                "floor_p50_ratio": {str(c): round(v, 3) for c, v in s["floor_p50_ratio"].items()},
                "floor_throughput_ratio": {
                    str(c): round(v, 3) for c, v in s["floor_throughput_ratio"].items()
                },
                "floor_cpu_ratio": {str(c): round(v, 3) for c, v in s["floor_cpu_ratio"].items()},
                "load_generator_cpu": {
                    str(c): round(v, 3) for c, v in s["load_generator_cpu"].items()
                },
                "replica_cpu": {str(c): round(v, 3) for c, v in s["replica_cpu"].items()},
                "results": {
                    system: {
                        str(c): {k: round(v, 2) for k, v in r.items()} for c, r in by_c.items()
                    }
                    for system, by_c in s["results"].items()
                },
            }
            for m, s in summaries.items()
        },
    }
    write_page(args, summaries, result)
    print_json_line(result)
    return 0


def write_page(args: argparse.Namespace, summaries: dict[str, dict], result: dict) -> None:
    page = ResultsPage("cloud_throughput", "Results: cloud decoder throughput")
    replica_cores, load_cores = args.cores
    if replica_cores is None:
        split = "every process shares every core (`--shared-cores` or a one-core machine)"
    else:
        split = f"replicas and floor on cores {replica_cores}, load generator on {load_cores}"
    page.text(
        "The floor (the same requests through `DecodeBatch` alone, in a process configured like "
        "the replica) and two real replicas side by side: continuous batching (`max_batch` 64) "
        f"and one at a time (`max_batch` 1); fp32 hidden states of {SOURCE_TOKENS}-token "
        f"sources, {args.tokens} tokens per request, `--threads {args.threads}`; {split}; "
        f"medians of {args.repeats} paired repeats. The load generator is `grpc.aio` in a "
        "process of its own (no `ghz`: it is in neither PyPI nor Debian); its CPU column is "
        "its own CPU time over the run's wall time (100 % = one core). Targets: "
        "`floor_p50_ratio_c16 <= 1.3`, `floor_p50_ratio_c1 <= 1.25`, "
        "`floor_throughput_ratio_c16 >= 0.8`, `speedup_c16 >= 3`. Timings on a machine "
        "shared with other work are slower and noisier; the load average is in the table below."
    )
    busy = result["background_cores"]
    if not busy < 0.2:
        page.text(
            f"**Not a quiet machine:** other work used {busy:.2f} cores on average during this "
            "run, so its wall-clock figures (latencies, tokens/s and their ratios to the floor) "
            "are no evidence for or against the targets; the CPU-per-token ratio is the figure "
            "that load moves least."
        )
    page.table(HEADERS, [row for s in summaries.values() for row in s["rows"]])
    many = [c for c in args.concurrency if c != 1]
    page.table(
        ["model", *(f"service/floor p50 c{c}" for c in args.concurrency),
         *(f"service/floor tokens/s c{c}" for c in many),
         *(f"service/floor CPU per token c{c}" for c in many),
         *(f"speedup c{c}" for c in many), *(f"p50 c{c} / c1" for c in many)],
        [[m, *(f"{s['floor_p50_ratio'][c]:.2f}x" for c in args.concurrency),
          *(f"{s['floor_throughput_ratio'][c]:.2f}x" for c in many),
          *(f"{s['floor_cpu_ratio'][c]:.2f}x" for c in many),
          *(f"{s['speedup'][c]:.2f}x" for c in many),
          *(f"{s['p50_ratio'][c]:.2f}x" for c in many)]
         for m, s in summaries.items()],
    )  # fmt: skip
    for m, s in summaries.items():
        if s["stages"]:
            page.heading(f"Where the time goes: {m}, batched, concurrency 16")
            page.text(
                "The replica's own stage timers (`tandem_cloud_stage_seconds`) over the "
                "concurrency-16 runs, and the floor's join and step timed the same way over its "
                "own runs. Engine stages (join, step, emit) run once per iteration for the whole "
                "batch; `send` is per message (time inside gRPC's write). The share column is a "
                "stage's total over the runs' wall time; the client's latency beyond the "
                "handler's own is gRPC receive and send outside the handler."
            )
            page.table(
                ["stage", "one observation", "observations", "mean ms", "share of wall time"],
                s["stages"],
            )
        if s["profile"]:
            prof = s["profile"]
            page.heading(f"Profile: {m}, batched, concurrency 16")
            page.text(
                "One extra concurrency-16 run of the batched replica: each thread's CPU time "
                "over the run's wall time (from `/proc`; 100 % = one core), then py-spy's "
                f"{prof['samples']} samples (250 Hz, `--gil`) of whichever thread held the GIL, "
                "by the function they landed in: Python's own work, which every thread of the "
                "replica shares and waits for."
            )
            page.table(
                ["thread", "CPU (share of one core)"],
                [[t, f"{share:.0%}"] for t, share in prof["thread_cpu"]],
            )
            page.table(
                ["thread", "function holding the GIL (self)", "share of GIL samples"],
                [[t, f"`{f}`", f"{n / prof['samples']:.0%}"] for t, f, n in prof["functions"]],
            )
    page.json(result)
    page.write(args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
