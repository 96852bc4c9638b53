"""Local decoding: Tandem vs Hugging Face optimum and transformers, same model and threads.

Why these peers: a user who wants a Marian model on a CPU today reaches for ``optimum``'s
``ORTModelForSeq2SeqLM`` (ONNX Runtime under ``transformers``' ``generate``) or for plain
``transformers`` in PyTorch. Tandem's local route only earns its place if it is clearly faster
and lighter than both on the same weights. optimum runs twice: as users run it, and with
``torch.set_num_threads(1)``, because on a small CPU optimum's torch-side work (logits
processors, cache shuffling) contends with ONNX Runtime's threads, and a reader should see how
much of the gap that alone explains.

The model is MarianMT the shape of opus-mt-en-de (d_model 512, 6+6 layers, 8 heads, FFN 2048,
vocab 58101, Marian's generation config: pad suppressed, EOS forced at the length limit) with
random weights, built once and cached under ``build/bench/``; optimum's exporter and Tandem's
export the same saved weights. Random models tend to repeat one token under greedy decoding,
which would make "identical ids" prove little, so LayerNorms get random scales and biases and
the LM head is untied with N(0, 1) weights; the run fails unless greedy paths vary (at least a
quarter of the forced tokens distinct in every case). Every system is forced to the same number
of new tokens (``min_new_tokens`` = ``max_new_tokens``), batch 1, greedy.

How it measures, and why:

- Each system runs in a child process of its own, so its peak RSS is its own (``ru_maxrss``)
  and one system's thread pools or imports (torch) never slow another.
- Per case, systems run interleaved (the order rotates every repeat) after one warm-up each;
  figures are medians over repeats, and ratios are medians of ratios within one repeat, so
  drifts in background load cancel.
- Every ONNX Runtime session is wrapped to time its ``session.run`` calls (``TimedSession``).
  For Tandem their sum is the *floor*: what the runs alone cost, measured in the very runs
  timed end to end, so ``vs_floor`` is Python overhead and nothing else. Encoder / first-step /
  per-step columns are session-run times (forward-call times for PyTorch); the first step
  includes computing the cross-attention cache in every system.

Targets: total time <= 0.45x optimum's as users run it and <= 0.80x at one torch thread;
<= 1.03x our floor; peak RSS <= 0.8x optimum's; identical ids across all systems.

    python bench/local_decode.py [--quick] [--threads 2] [--repeats 3] [--int8]

``--int8`` adds Tandem's int8 export: its time against fp32 and how often its ids match fp32,
reported apart from ``identical`` (int8 may differ by design; its >= 99 % target is measured
on the trained default model). Needs the ``bench`` extra (``pip install -e '.[bench]'``), in a
venv of its own (optimum-onnx pins an older transformers). The last line printed is one JSON
object: ``vs_optimum``, ``vs_optimum_1t``, ``vs_transformers``, ``vs_floor`` (geometric means
over the cases run), ``rss_vs_optimum``, ``identical`` and the raw figures. The run writes its
results page, ``docs/results/local_decode.md`` (``--no-results``: none).
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    TimedSession,
    Worker,
    geomean,
    paired_ratio,
    print_json_line,
    print_table,
    serve,
    versions,
)
from bench.results import ResultsPage, add_results_arguments  # noqa: E402

#: opus-mt-en-de's shape and special tokens; weights are random.
MARIAN = dict(
    vocab_size=58101,
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
    max_position_embeddings=512,
    activation_function="swish",
    scale_embedding=True,
    pad_token_id=58100,
    eos_token_id=0,
    decoder_start_token_id=58100,
    tie_word_embeddings=False,  # untied LM head: see the perturbation below
)
#: opus-mt-en-de's generation config, greedy (the real one beams: 4).
GENERATION = dict(
    bad_words_ids=[[58100]],
    forced_eos_token_id=0,
    max_length=512,
    num_beams=1,
    do_sample=False,
)
#: Found by trial: a larger init std makes the model repeat itself; random LayerNorms and an
#: untied N(0, 1) LM head make 60-85 % of greedy tokens distinct.
PERTURB = dict(init_std=0.02, layer_norm_noise=0.1, lm_head_std=1.0, seed=0)

CASES = [(src, new) for src in (16, 64, 256) for new in (32, 128)]
QUICK_CASES = [(64, 32)]
SYSTEMS = ("tandem", "optimum", "optimum-1t", "transformers")
INT8 = "tandem-int8"
#: Pause before each run, so threads the previous system left spin-waiting have gone to sleep.
SETTLE_S = 0.05
TARGETS = {"vs_optimum": 0.45, "vs_optimum_1t": 0.80, "vs_floor": 1.03, "rss_vs_optimum": 0.8}


# -- the model --------------------------------------------------------------------------------


def _cache_key() -> str:
    """Exports are reused while the recipe, the exporters and their libraries are unchanged."""
    import tandem.runtime.export as export

    runtime = Path(export.__file__).parent
    sources = sorted(
        hashlib.sha256((runtime / f).read_bytes()).hexdigest()
        for f in ("export.py", "torch_parts.py", "quantize.py", "manifest.py", "fingerprint.py")
    )
    recipe = {
        "marian": MARIAN,
        "generation": GENERATION,
        "perturb": PERTURB,
        "sources": sources,
        "versions": versions("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime"),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _build_marian(out: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(PERTURB["seed"])
    config = transformers.MarianConfig(**MARIAN, init_std=PERTURB["init_std"])
    model = transformers.MarianMTModel(config).eval()
    model.generation_config = transformers.GenerationConfig(
        **GENERATION,
        pad_token_id=MARIAN["pad_token_id"],
        eos_token_id=MARIAN["eos_token_id"],
        decoder_start_token_id=MARIAN["decoder_start_token_id"],
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                param.add_(torch.randn_like(param) * PERTURB["layer_norm_noise"])
            elif "lm_head" in name:
                param.normal_(0.0, PERTURB["lm_head_std"])
    model.save_pretrained(out)


def prepare(cache: Path, int8: bool) -> dict[str, Path]:
    """The checkpoint and every system's export, built once per recipe (a minute or two).

    Runs in a child process (``--prepare``): a child's peak RSS starts from its parent's peak,
    since the kernel carries the parent's high-water mark through fork and exec, so the parent
    must never hold torch or a model, or every system would report the parent's peak.
    """
    args = [__file__, "--cache", str(cache), "--prepare", *(["--int8"] if int8 else [])]
    done = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True, check=True)
    last = done.stdout.strip().splitlines()[-1]  # exporters may print before it
    return {name: Path(path) for name, path in json.loads(last).items()}


def prepare_main(cache: Path, int8: bool) -> int:
    root = cache / _cache_key()
    paths = {"hf": root / "hf", "optimum": root / "optimum", "tandem": root / "tandem"}
    paths[INT8] = root / INT8
    steps = [("hf", _build_marian), ("optimum", _export_optimum), ("tandem", _export_tandem)]
    if int8:
        steps.append((INT8, _export_tandem_int8))
    stale = False  # a rebuilt checkpoint makes every export of the old one stale
    for name, make in steps:
        done = root / f"{name}.done"
        if done.exists() and not stale:
            continue
        stale = True
        start = time.perf_counter()
        print(f"building {name} in {paths[name]} ...", file=sys.stderr, flush=True)
        if name == "hf":
            make(paths["hf"])
        else:
            make(paths["hf"], paths[name])
        done.write_text(f"{time.perf_counter() - start:.1f} s\n")
    print(json.dumps({name: str(path) for name, path in paths.items()}))
    return 0


def _export_optimum(hf: Path, out: Path) -> None:
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    ORTModelForSeq2SeqLM.from_pretrained(hf, export=True).save_pretrained(out)


def _export_tandem(hf: Path, out: Path) -> None:
    from tandem.runtime.export import export_hf

    export_hf(hf, out, overwrite=True)


def _export_tandem_int8(hf: Path, out: Path) -> None:
    from tandem.runtime.export import export_hf

    export_hf(hf, out, int8=True, overwrite=True)


def source_ids(length: int) -> list[int]:
    """A source of ``length`` tokens: random ordinary tokens, then EOS (as a tokenizer ends it)."""
    import numpy as np

    rng = np.random.default_rng(1000 + length)
    body = rng.integers(1, MARIAN["pad_token_id"], size=length - 1)  # not EOS (0) nor pad
    return [*map(int, body), MARIAN["eos_token_id"]]


# -- the systems, each in a worker process ----------------------------------------------------


def _tandem_runner(path: Path, threads: int):
    from tandem.runtime.bundle import load_bundle
    from tandem.runtime.options import SessionConfig
    from tandem.runtime.seq2seq import Seq2Seq

    bundle = load_bundle(path, SessionConfig(intra_op_threads=threads))
    timed = {part: TimedSession(session) for part, session in bundle.sessions.items()}
    bundle.sessions = timed
    model = Seq2Seq(bundle)

    def run(src: list[int], new: int) -> dict[str, Any]:
        for session in timed.values():
            session.reset()
        start = time.perf_counter()
        ids = model.generate(src, max_new_tokens=new, min_new_tokens=new).ids
        total = (time.perf_counter() - start) * 1000
        encoder, cache_init, decoder = (
            timed[p].times_ms for p in ("encoder", "cache_init", "decoder")
        )
        return {
            "ids": ids,
            "total_ms": total,
            "encoder_ms": sum(encoder),
            "first_ms": sum(cache_init) + decoder[0],
            "step_ms": statistics.fmean(decoder[1:]) if len(decoder) > 1 else None,
            "runs_ms": sum(encoder) + sum(cache_init) + sum(decoder),
        }

    return run


def _hf_generate(model, src: list[int], new: int) -> tuple[list[int], float]:
    """One forced-length greedy ``generate`` of a Hugging Face-style model: (ids, wall ms).
    optimum and transformers are called exactly alike, so their times compare."""
    import torch

    input_ids = torch.tensor([src])
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new,
        min_new_tokens=new,
    )
    total_ms = (time.perf_counter() - start) * 1000
    return out[0, 1:].tolist(), total_ms


def _optimum_runner(path: Path, threads: int, torch_threads: int | None):
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the only setting changed: same threads as ours
    model = ORTModelForSeq2SeqLM.from_pretrained(path, session_options=options)
    parts = {
        "encoder": model.encoder,
        "decoder": model.decoder,
        "decoder_with_past": model.decoder_with_past,
    }
    timed = {}
    for name, part in parts.items():
        timed[name] = part.session = TimedSession(part.session)

    def run(src: list[int], new: int) -> dict[str, Any]:
        for session in timed.values():
            session.reset()
        ids, total = _hf_generate(model, src, new)
        encoder, first, steps = (timed[p].times_ms for p in parts)
        return {
            "ids": ids,
            "total_ms": total,
            "encoder_ms": sum(encoder),
            "first_ms": sum(first),
            "step_ms": statistics.fmean(steps) if steps else None,
            "runs_ms": sum(encoder) + sum(first) + sum(steps),
        }

    return run


def _transformers_runner(path: Path, threads: int):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    calls: dict[str, list[float]] = {"encoder": [], "decoder": []}

    def timed(name: str, forward):
        @functools.wraps(forward)  # generate() inspects forward's signature
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            calls[name].append((time.perf_counter() - start) * 1000)
            return out

        return wrapper

    encoder = model.get_encoder()
    encoder.forward = timed("encoder", encoder.forward)
    model.forward = timed("decoder", model.forward)  # one call per generated token

    def run(src: list[int], new: int) -> dict[str, Any]:
        for times in calls.values():
            times.clear()
        ids, total = _hf_generate(model, src, new)
        steps = calls["decoder"]
        return {
            "ids": ids,
            "total_ms": total,
            "encoder_ms": sum(calls["encoder"]),
            "first_ms": steps[0],
            "step_ms": statistics.fmean(steps[1:]) if len(steps) > 1 else None,
            "runs_ms": None,
        }

    return run


def worker_main(system: str, path: Path, threads: int) -> int:
    if system in ("tandem", INT8):
        run = _tandem_runner(path, threads)
    elif system == "optimum":
        run = _optimum_runner(path, threads, torch_threads=None)
    elif system == "optimum-1t":
        run = _optimum_runner(path, threads, torch_threads=1)
    elif system == "transformers":
        run = _transformers_runner(path, threads)
    else:
        raise SystemExit(f"unknown system {system!r}")

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") == "ping":  # answered once the model is loaded
            return {}
        gc.collect()  # before the clock starts, so no run pays for an earlier one's garbage
        return run(request["src"], request["new"])

    serve(handle)
    return 0


# -- the parent: schedule, check, report ------------------------------------------------------


def _run_cases(workers: dict[str, Worker], cases, repeats: int) -> dict[tuple, dict[str, list]]:
    systems = list(workers)
    start = time.perf_counter()
    for worker in workers.values():
        worker.call({"op": "ping"})
    print(f"models loaded in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    def call(system: str, request: dict[str, Any]) -> dict[str, Any]:
        time.sleep(SETTLE_S)
        return workers[system].call(request)

    results: dict[tuple, dict[str, list]] = {}
    for src_len, new in cases:
        src = source_ids(src_len)
        request = {"src": src, "new": new}
        runs: dict[str, list] = {s: [] for s in systems}
        for system in systems:  # warm-up: first runs at a new shape allocate
            runs[system].append(call(system, request) | {"warmup": True})
        for r in range(repeats):
            for system in systems[r % len(systems) :] + systems[: r % len(systems)]:
                runs[system].append(call(system, request))
        print(f"case src={src_len} new={new} done", file=sys.stderr, flush=True)
        results[(src_len, new)] = runs
    return results


def _first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first token where two id lists differ (the shorter length if none)."""
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def _check_ids(results, systems) -> tuple[bool, list[str]]:
    """All runs of every system must produce the reference ids; greedy paths must vary."""
    identical, problems = True, []
    for (src_len, new), runs in results.items():
        reference = runs["tandem"][0]["ids"]
        if len(reference) != new:
            problems.append(f"src={src_len} new={new}: tandem made {len(reference)} tokens")
        distinct = len(set(reference))
        if distinct < max(4, new // 4):
            raise SystemExit(
                f"src={src_len} new={new}: only {distinct} distinct tokens in {new}; the random "
                "model repeats itself, so equal ids would prove little (change PERTURB)"
            )
        for system in systems:
            for run in runs[system]:
                if run["ids"] != reference:
                    identical = False
                    first = _first_difference(run["ids"], reference)
                    problems.append(
                        f"src={src_len} new={new}: {system} differs from tandem at token {first}"
                    )
                    break
    return identical, problems


def _timed(runs: list[dict]) -> list[dict]:
    return [r for r in runs if not r.get("warmup")]


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def _summarize(results, systems, rss_mb) -> tuple[list[list], dict[str, Any]]:
    rows, per_case = [], []
    for (src_len, new), runs in results.items():
        ours = [r["total_ms"] for r in _timed(runs["tandem"])]
        case = {"src": src_len, "new": new}
        for system in systems:
            timed = _timed(runs[system])
            totals = [r["total_ms"] for r in timed]
            ratio = paired_ratio(ours, totals)
            over = None
            if timed[0]["runs_ms"] is not None:
                over = statistics.median((r["total_ms"] - r["runs_ms"]) / new for r in timed)
            rows.append(
                [
                    f"{src_len}×{new}",
                    system,
                    statistics.median(totals),
                    statistics.median(totals) / new,
                    _median(timed, "encoder_ms"),
                    _median(timed, "first_ms"),
                    _median(timed, "step_ms"),
                    _median(timed, "runs_ms"),
                    over,
                    ratio,
                ]
            )
            case[f"{system}_ms"] = round(statistics.median(totals), 2)
            if system != "tandem":
                case[f"vs_{system.replace('-', '_')}"] = round(ratio, 4)
        floors = [r["runs_ms"] for r in _timed(runs["tandem"])]
        case["tandem_floor_ms"] = round(statistics.median(floors), 2)
        case["vs_floor"] = round(paired_ratio(ours, floors), 4)
        per_case.append(case)

    def gm(key: str) -> float | None:
        values = [c[key] for c in per_case if key in c]
        return round(geomean(values), 4) if values else None

    summary = {
        "vs_optimum": gm("vs_optimum"),
        "vs_optimum_1t": gm("vs_optimum_1t"),
        "vs_transformers": gm("vs_transformers"),
        "vs_floor": gm("vs_floor"),
        "rss_vs_optimum": round(rss_mb["tandem"] / rss_mb["optimum"], 4),
        "cases": per_case,
    }
    return rows, summary


def _int8_agreement(results) -> dict[str, float]:
    """How often int8 reproduces fp32 (not part of ``identical``: int8 may differ by design)."""
    same, prefix, ratios = [], [], []
    for runs in results.values():
        fp32, int8 = (_timed(runs[s]) for s in ("tandem", INT8))
        ratios.append(paired_ratio([r["total_ms"] for r in int8], [r["total_ms"] for r in fp32]))
        ref, got = runs["tandem"][0]["ids"], runs[INT8][0]["ids"]
        same.append(ref == got)
        prefix.append(_first_difference(ref, got) / len(ref))
    return {
        "int8_vs_fp32": round(geomean(ratios), 4),
        "int8_identical_share": round(sum(same) / len(same), 4),
        "int8_agreeing_prefix": round(statistics.fmean(prefix), 4),
    }


def _yes(holds: bool) -> str:
    return "yes" if holds else "NO"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"cases {QUICK_CASES} only")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, every system")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per system and case")
    parser.add_argument("--int8", action="store_true", help="also run Tandem's int8 export")
    parser.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "build" / "bench" / "local_decode",
        help="where the checkpoint and exports are kept between runs",
    )
    parser.add_argument("--worker", nargs=2, metavar=("SYSTEM", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    add_results_arguments(parser)
    args = parser.parse_args()
    if args.prepare:
        return prepare_main(args.cache, args.int8)
    if args.worker:
        return worker_main(args.worker[0], Path(args.worker[1]), args.threads)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")

    wall = time.perf_counter()
    paths = prepare(args.cache, args.int8)
    systems = [*SYSTEMS, *([INT8] if args.int8 else [])]
    where = {s: s for s in (*SYSTEMS, INT8)} | {"optimum-1t": "optimum", "transformers": "hf"}
    workers = {}
    try:
        for system in systems:  # they load in parallel; the first request waits for each
            argv = [__file__, "--threads", str(args.threads), "--worker", system]
            workers[system] = Worker([*argv, str(paths[where[system]])])
        results = _run_cases(workers, QUICK_CASES if args.quick else CASES, args.repeats)
    except BaseException:
        for worker in workers.values():
            worker.kill()
        raise
    rss_mb = {system: worker.close() for system, worker in workers.items()}

    peers = [s for s in systems if s != INT8]
    identical, problems = _check_ids(results, peers)
    rows, summary = _summarize(results, systems, rss_mb)
    headers = [
        "src×new", "system", "total ms", "ms/token", "encoder ms", "first step ms", "ms/step",
        "runs ms", "overhead ms/token", "tandem ÷ system",
    ]  # fmt: skip
    intro = (
        f"Local decoding, batch 1, greedy, {args.threads} intra-op threads, medians of "
        f"{args.repeats} interleaved runs. runs ms: sum of session.run times (Tandem's floor); "
        "overhead: (total - runs) / new tokens; tandem ÷ system: median of paired ratios."
    )
    print("\n" + intro)
    rss_headers = ["system", "peak RSS MB", "÷ optimum"]
    rss_rows = [[s, rss_mb[s], rss_mb[s] / rss_mb["optimum"]] for s in systems]
    target_rows = [
        [key, summary[key], f"<= {limit}", _yes(summary[key] <= limit)]
        for key, limit in TARGETS.items()
    ]
    target_rows.append(["identical", str(identical).lower(), "true", _yes(identical)])
    target_headers = ["metric", "value", "target", "holds"]
    print_table(headers, rows)
    print()
    print_table(rss_headers, rss_rows)
    print()
    print_table(target_headers, target_rows)
    for problem in problems:
        print(f"MISMATCH {problem}")
    elapsed = time.perf_counter() - wall
    library = versions("onnxruntime", "optimum", "optimum-onnx", "transformers", "torch", "numpy")
    print(f"\nwall {elapsed:.0f} s; " + ", ".join(f"{k} {v}" for k, v in library.items()))
    result = {
        "bench": "local_decode",
        "quick": args.quick,
        "threads": args.threads,
        "repeats": args.repeats,
        **{k: v for k, v in summary.items() if k != "cases"},
        "identical": identical,
        "rss_mb": {s: round(v, 1) for s, v in rss_mb.items()},
        **(_int8_agreement(results) if args.int8 else {}),
        "wall_s": round(elapsed, 1),
        "versions": library,
        "cases": summary["cases"],
    }
    page = ResultsPage("local_decode", "Results: local decoding against optimum and transformers")
    page.text(
        intro + " Model: MarianMT the shape of opus-mt-en-de with random weights (see the "
        "benchmarks page for what is measured)."
    )
    page.table(headers, rows)
    page.table(rss_headers, rss_rows)
    page.table(target_headers, target_rows)
    for problem in problems:
        page.text(f"MISMATCH {problem}")
    page.text(f"Wall {elapsed:.0f} s; " + ", ".join(f"{k} {v}" for k, v in library.items()) + ".")
    page.json(result)
    page.write(args.results_dir)
    print_json_line(result)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
