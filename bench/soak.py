"""Soak: steady load through the edge agent and the cloud for minutes; do the daemons leak?

Both daemons run as child processes (``tandem cloud serve``, ``tandem edge run``), so their
RSS, open file descriptors and threads are read from outside (``tandem.emulate.soak``). App
threads send requests at a fixed rate over the agent's Unix socket: the agent routes them to
the cloud (``always_cloud``), and one in ten is ``local_only`` so the device's decoding path is
soaked too. Every answer is checked against a local reference decode, so a daemon that stays
small by failing requests does not pass.

Targets (issue 8), after warm-up: RSS growth < 10 % for both daemons, no file-descriptor
growth, no thread growth. Warm-up starts with a burst of concurrent requests (see ``burst``),
so thread pools that grow on demand reach their working size before the baseline.

    python bench/soak.py [--minutes 10] [--quick] [--rate 20]

Prints a table of samples and, last, one JSON line with ``rss_growth_edge``,
``rss_growth_cloud`` (relative), ``fd_growth_*``, ``thread_growth_*`` (absolute), the request
counts and ``pass``. The run writes its results page, ``docs/results/soak.md``
(``--no-results``: none).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from pathlib import Path

from _common import print_json_line, print_table
from results import ResultsPage, add_results_arguments

from tandem.defaults import bundle_path
from tandem.edge.client import EdgeClient
from tandem.emulate.inputs import sample_inputs
from tandem.emulate.processes import CloudProcess, EdgeProcess, free_port
from tandem.emulate.soak import RSS_GROWTH_TARGET, Sample, growth, sample
from tandem.errors import TandemError
from tandem.runtime.seq2seq import Seq2Seq

INPUT_POOL = 300
"""Distinct inputs, cycled: enough variety for every length bucket, references computed once."""
BURST_CONCURRENCY = 8
"""Concurrent requests in the warm-up burst: the agent's default ``max_concurrent``."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    parser.add_argument("--quick", action="store_true", help="2 minutes, 30 s warm-up")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--clients", type=int, default=2, help="app threads")
    parser.add_argument("--bundle", default=None)
    add_results_arguments(parser)
    args = parser.parse_args()
    minutes = 2.0 if args.quick else args.minutes
    duration_s = minutes * 60
    warmup_s = 30.0 if args.quick else max(60.0, duration_s / 5)
    interval_s = 3.0 if args.quick else 10.0

    path = bundle_path(args.bundle)
    reference = Seq2Seq.load(path)
    inputs = sample_inputs(INPUT_POOL, sorted(reference.manifest.languages), seed=11)
    eos = reference.manifest.tokens.eos
    expected = [
        [t for t in reference.generate(text, target=target).ids if t != eos]
        for text, target in inputs
    ]
    with tempfile.TemporaryDirectory(prefix="tandem-soak-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        cloud = CloudProcess(path, port, workdir / "cloud.log")
        edge = EdgeProcess(
            {
                "bundle": str(path),
                "socket": str(workdir / "edge.sock"),
                "policy": {"policy": "always_cloud"},
                "cloud": {"addresses": [f"127.0.0.1:{port}"], "ping_interval_s": 1.0},
            },
            workdir,
        )
        try:
            cloud.start()
            edge.start()
            result = soak(args, edge, cloud, inputs, expected, duration_s, interval_s)
        finally:
            edge.stop()
            cloud.stop()
    samples_edge, samples_cloud, counts = result
    rows = [
        [f"{e.t_s:.0f}", f"{e.rss_bytes / 2**20:.1f}", e.fds, e.threads,
         f"{c.rss_bytes / 2**20:.1f}", c.fds, c.threads]
        for e, c in zip(samples_edge, samples_cloud, strict=True)
    ]  # fmt: skip
    step = max(1, -(-len(rows) // 25))  # at most about 25 rows
    headers = ["t (s)", "edge RSS (MiB)", "edge fds", "edge threads",
               "cloud RSS (MiB)", "cloud fds", "cloud threads"]  # fmt: skip
    shown = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
    print_table(headers, shown)
    g_edge = growth(samples_edge, warmup_s)
    g_cloud = growth(samples_cloud, warmup_s)
    answered_ok = counts["answered"] == counts["sent"] and counts["mismatched"] == 0
    passed = g_edge.ok and g_cloud.ok and answered_ok
    verdict = (
        f"after {warmup_s:.0f} s warm-up: RSS edge {g_edge.rss:+.1%}, cloud {g_cloud.rss:+.1%} "
        f"(target < {RSS_GROWTH_TARGET:.0%}); fds edge {g_edge.fds:+g}, cloud {g_cloud.fds:+g}; "
        f"threads edge {g_edge.threads:+g}, cloud {g_cloud.threads:+g} (target: no growth); "
        f"{counts['answered']}/{counts['sent']} answered, {counts['mismatched']} mismatched, "
        f"{counts['cloud']} by the cloud"
    )
    print(verdict)
    summary = {
        "minutes": minutes,
        "warmup_s": warmup_s,
        "rate_per_s": args.rate,
        "requests": counts["sent"],
        "answered": counts["answered"],
        "mismatched": counts["mismatched"],
        "cloud_answers": counts["cloud"],
        "rss_mib_edge": round(samples_edge[-1].rss_bytes / 2**20, 1),
        "rss_mib_cloud": round(samples_cloud[-1].rss_bytes / 2**20, 1),
        "rss_growth_edge": round(g_edge.rss, 4),
        "rss_growth_cloud": round(g_cloud.rss, 4),
        "fd_growth_edge": g_edge.fds,
        "fd_growth_cloud": g_cloud.fds,
        "thread_growth_edge": g_edge.threads,
        "thread_growth_cloud": g_cloud.threads,
        "pass": passed,
    }
    page = ResultsPage("soak", "Results: soak")
    page.text(
        f"{minutes:g} minutes at {args.rate:g} requests/s from {args.clients} app threads "
        "through both daemons (`always_cloud`, one in ten `local_only`), every answer checked "
        "against a local reference. Targets after warm-up: RSS growth < 10 %, no fd growth, "
        "no thread growth."
    )
    page.table(headers, shown)
    page.text(verdict[0].upper() + verdict[1:] + ".")
    page.json(summary)
    page.write(args.results_dir)
    print_json_line(summary)
    return 0 if passed else 1


def burst(edge, inputs, concurrency: int) -> None:
    """Warm-up: ``concurrency`` requests at once, a few times over, before the steady load.

    The gRPC servers' thread pools grow on demand, up to their bound, whenever a call arrives
    while every pool thread is busy; under steady load that happens rarely (a new call racing
    the end of the previous one), so a pool reaches its working size only after many minutes
    and a 10-minute run would count that bounded growth as a leak. Reaching the most
    concurrency the steady load can cause, during warm-up, sizes the pools before the baseline.
    """

    def one(n: int) -> None:
        with EdgeClient(edge.socket, timeout_s=60.0) as client:
            for i in range(3):
                text, target = inputs[(n * 3 + i) % len(inputs)]
                client.ask(text, target, local_only=i == 2)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def soak(args, edge, cloud, inputs, expected, duration_s, interval_s):
    """Run the load for ``duration_s`` while sampling both daemons every ``interval_s``."""
    counts = {"sent": 0, "answered": 0, "mismatched": 0, "cloud": 0}
    lock = threading.Lock()
    order = itertools.count()
    t0 = time.monotonic()
    end = t0 + duration_s

    def client_loop() -> None:
        with EdgeClient(edge.socket, timeout_s=60.0) as client:
            while True:
                with lock:
                    n = next(order)
                due = t0 + n / args.rate
                if due >= end:
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                text, target = inputs[n % len(inputs)]
                try:
                    answer = client.ask(text, target, local_only=n % 10 == 9)
                    ok, via_cloud = answer.ids == expected[n % len(inputs)], answer.route
                except TandemError:
                    ok, via_cloud = None, ""
                with lock:
                    counts["sent"] += 1
                    counts["answered"] += ok is not None
                    counts["mismatched"] += ok is False
                    counts["cloud"] += via_cloud == "cloud"

    burst(edge, inputs, BURST_CONCURRENCY)
    threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    samples_edge: list[Sample] = []
    samples_cloud: list[Sample] = []
    while time.monotonic() < end:
        t = time.monotonic() - t0
        samples_edge.append(sample(edge.pid, t))
        samples_cloud.append(sample(cloud.pid, t))
        time.sleep(max(0.0, t0 + len(samples_edge) * interval_s - time.monotonic()))
    for thread in threads:
        thread.join()
    return samples_edge, samples_cloud, counts


if __name__ == "__main__":
    raise SystemExit(main())
