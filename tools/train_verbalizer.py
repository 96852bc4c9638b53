"""Train the shipped number verbalizer: tokenizer, MarianMT model, resumable training loop.

Usage::

    python tools/train_verbalizer.py --out build/verbalizer            # full run, resumes
    python tools/train_verbalizer.py --out /tmp/v --smoke              # a few steps, sanity
    python tools/train_verbalizer.py --out build/verbalizer --device cuda --minutes-budget 5 \
        --tokenizer tandem/models/verbalizer/tokenizer.json         # on a GPU, shipped tokens

A fresh run trains the tokenizer, measures throughput on a throwaway copy of the model and
fixes a step-based plan (``plan.json``). The plan, not the wall clock, drives everything that
follows: the cosine schedule, checkpoint and evaluation steps. Resuming reads the plan back, so
a resumed run takes the same steps as an uninterrupted one. The data stream is a deterministic
function of the seed: chunk ``c`` is generated from ``(seed, c)`` and the checkpoint stores the
position inside it.

Teacher forcing matches inference on the split runtime: the encoder sees only the digits (no
language token, so one encoder output serves every target language), and the decoder's first
generated token is the target-language token, forced at inference like NLLB's forced BOS:
decoder input ``[<pad>, __L__, t1..tn]``, labels ``[__L__, t1..tn, </s>]``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.verbalizer_data import (  # noqa: E402
    EOS,
    EOS_ID,
    HELDOUT_SEED,
    LANGUAGE_TOKEN_IDS,
    LANGUAGES,
    PAD,
    PAD_ID,
    TRAIN_SEED,
    UNK,
    build_tokenizer,
    heldout_round_set,
    heldout_set,
    language_token,
    reserved_sources,
    tokenizer_corpus,
    training_examples,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = TRAIN_SEED
    """Seeds torch (init, dropout), numpy and the data stream."""
    vocab_size: int = 1000
    tokenizer_examples: int = 20_000
    """Training lines (source + every language's target) the tokenizer is trained on."""
    d_model: int = 256
    layers: int = 3
    heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    """The data is endless and never repeats, so regularisation only slows convergence."""
    max_positions: int = 256
    """Longest target is about 70 tokens and longest source 49; ample room."""
    peak_lr: float = 8e-4
    min_lr_ratio: float = 0.02
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_label_tokens: int = 2500
    """Token budget per batch, counted as padded label tokens (batch size x longest target)."""
    chunk_examples: int = 4000
    """Examples generated at once, sorted by length and cut into batches (limits padding)."""
    minutes_budget: float = 85.0
    ckpt_minutes: float = 5.0
    eval_minutes: float = 10.0
    eval_examples: int = 400
    final_eval_examples: int = 2000
    max_new_tokens: int = 96
    threads: int = 2
    """Intra-op threads while the machine is otherwise idle; see ``ThreadGovernor``."""


@dataclass(frozen=True)
class Plan:
    """Step counts fixed once at the start of a run and reused on resume."""

    total_steps: int
    warmup_steps: int
    ckpt_every_steps: int
    eval_every_steps: int
    measured_steps_per_s: float
    measured_label_tokens_per_s: float


# ---------------------------------------------------------------- data stream


class BatchStream:
    """Deterministic batches: chunk ``c`` comes from ``random.Random((seed, c))``.

    Each chunk is sorted by target length and cut into batches under the token budget, then
    the batches are shuffled; ``(chunk, offset)`` is the whole cursor state.
    """

    def __init__(
        self, tokenizer: Tokenizer, cfg: TrainConfig, exclude: frozenset[str], seed: int
    ) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.exclude = exclude
        self.seed = seed
        self.chunk = 0
        self.offset = 0
        self._batches: list[list[tuple[list[int], list[int]]]] | None = None

    def state(self) -> dict[str, int]:
        return {"chunk": self.chunk, "offset": self.offset}

    def load_state(self, state: dict[str, int]) -> None:
        self.chunk, self.offset = state["chunk"], state["offset"]
        self._batches = None

    def _make_chunk(self, chunk: int) -> list[list[tuple[list[int], list[int]]]]:
        rng = random.Random(self.seed * 1_000_003 + chunk)
        examples = list(
            itertools.islice(training_examples(rng, self.exclude), self.cfg.chunk_examples)
        )
        src = self.tokenizer.encode_batch([s for s, _, _ in examples])
        tgt = self.tokenizer.encode_batch([t for _, _, t in examples], add_special_tokens=False)
        pairs = []
        for (_, lang, _), s, t in zip(examples, src, tgt, strict=True):
            pairs.append((s.ids, [LANGUAGE_TOKEN_IDS[lang], *t.ids]))
        pairs.sort(key=lambda p: (len(p[1]), len(p[0])))
        batches, current, longest = [], [], 0
        for pair in pairs:
            label_len = len(pair[1]) + 1
            if (
                current
                and max(longest, label_len) * (len(current) + 1) > self.cfg.batch_label_tokens
            ):
                batches.append(current)
                current, longest = [], 0
            current.append(pair)
            longest = max(longest, label_len)
        if current:
            batches.append(current)
        rng.shuffle(batches)
        return batches

    def next(self) -> dict[str, torch.Tensor]:
        if self._batches is None:
            self._batches = self._make_chunk(self.chunk)
        if self.offset >= len(self._batches):
            self.chunk, self.offset = self.chunk + 1, 0
            self._batches = self._make_chunk(self.chunk)
        batch = self._batches[self.offset]
        self.offset += 1
        return collate(batch)


def collate(batch: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """``batch`` holds (source ids with </s>, [__L__, target ids]) pairs."""
    src_len = max(len(s) for s, _ in batch)
    tgt_len = max(len(t) for _, t in batch) + 1
    input_ids = torch.full((len(batch), src_len), PAD_ID, dtype=torch.long)
    decoder_input_ids = torch.full((len(batch), tgt_len), PAD_ID, dtype=torch.long)
    labels = torch.full((len(batch), tgt_len), -100, dtype=torch.long)
    for i, (s, t) in enumerate(batch):
        input_ids[i, : len(s)] = torch.tensor(s)
        decoder_input_ids[i, 1 : len(t) + 1] = torch.tensor(t)  # [<pad>, __L__, t1..tn]
        labels[i, : len(t) + 1] = torch.tensor([*t, EOS_ID])  # [__L__, t1..tn, </s>]
    return {
        "input_ids": input_ids,  # (batch, src_len) int64
        "attention_mask": (input_ids != PAD_ID).long(),  # (batch, src_len) int64
        "decoder_input_ids": decoder_input_ids,  # (batch, tgt_len) int64
        "labels": labels,  # (batch, tgt_len) int64, -100 on padding
    }


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig, vocab_size: int):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.layers,
        decoder_layers=cfg.layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        # Without scaling, token embeddings are tiny next to the sinusoidal positions and the
        # model learns to ignore its source.
        scale_embedding=True,
        max_position_embeddings=cfg.max_positions,
        dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        activation_dropout=cfg.dropout,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        forced_eos_token_id=EOS_ID,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
    )
    model = MarianMTModel(config)
    gen = model.generation_config
    gen.decoder_start_token_id = PAD_ID
    gen.eos_token_id = EOS_ID
    gen.pad_token_id = PAD_ID
    gen.forced_eos_token_id = EOS_ID
    gen.max_length = cfg.max_new_tokens + 2
    gen.num_beams = 1
    gen.do_sample = False
    return model


def lr_lambda(plan: Plan, cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < plan.warmup_steps:
            return (step + 1) / plan.warmup_steps
        progress = min(
            1.0, (step - plan.warmup_steps) / max(1, plan.total_steps - plan.warmup_steps)
        )
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine

    return factor


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.peak_lr,
        betas=(0.9, 0.98),
    )


def train_step(model, optimizer, batch, cfg: TrainConfig) -> float:
    device = next(model.parameters()).device
    loss = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach().item()


# ---------------------------------------------------------------- threads


class ThreadGovernor:
    """Use all intra-op threads only while no other process wants the CPU.

    OpenMP threads meet at a barrier after every op. When another process holds one of the
    two cores, each barrier waits for a scheduler slice: measured, a step then runs about three
    times slower with two threads than with one. The governor watches how much CPU other
    processes used since its last look and drops to one thread while they use a noticeable
    share. It changes wall time only; the plan, the data and the schedule do not depend on it.
    """

    def __init__(self, max_threads: int, busy_threshold_cores: float = 0.3) -> None:
        self.max_threads = max_threads
        self.busy_threshold_cores = busy_threshold_cores
        self.threads = 1  # start cautious: one slow two-thread step can take tens of seconds
        self._last = self._sample()
        torch.set_num_threads(1)

    @staticmethod
    def _sample() -> tuple[float, int, int] | None:
        """(monotonic s, busy jiffies of the machine, jiffies of this process); None off Linux."""
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            return None
        busy = user + nice + system + irq + softirq + steal
        return time.monotonic(), busy, int(mine[11]) + int(mine[12])  # utime + stime

    def update(self) -> None:
        now = self._sample()
        if now is None or self._last is None:
            return
        elapsed_s = now[0] - self._last[0]
        if elapsed_s < 5.0:
            return
        others_cores = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / (
            elapsed_s * os.sysconf("SC_CLK_TCK")
        )
        self._last = now
        wanted = 1 if others_cores > self.busy_threshold_cores else self.max_threads
        if wanted != self.threads:
            log.info(
                "threads %d -> %d (other processes use %.2f cores)",
                self.threads,
                wanted,
                others_cores,
            )
            torch.set_num_threads(wanted)
            self.threads = wanted


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model, tokenizer: Tokenizer, examples: list[tuple[str, str, str]], cfg: TrainConfig
) -> dict[str, float]:
    """Greedy exact match per language, with the language token forced as first output."""
    model.eval()
    correct = {lang: 0 for lang in LANGUAGES}
    total = {lang: 0 for lang in LANGUAGES}
    failures: list[tuple[str, str, str, str]] = []
    for lang in LANGUAGES:
        subset = [(s, t) for s, lang_, t in examples if lang_ == lang]
        for start in range(0, len(subset), 128):
            part = subset[start : start + 128]
            enc = [e.ids for e in tokenizer.encode_batch([s for s, _ in part])]
            width = max(len(ids) for ids in enc)
            device = next(model.parameters()).device
            input_ids = torch.tensor(
                [ids + [PAD_ID] * (width - len(ids)) for ids in enc], device=device
            )
            prefix = torch.tensor([[PAD_ID, LANGUAGE_TOKEN_IDS[lang]]] * len(part), device=device)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=(input_ids != PAD_ID).long(),
                decoder_input_ids=prefix,
                num_beams=1,
                do_sample=False,
                max_length=cfg.max_new_tokens + 2,
            )
            texts = tokenizer.decode_batch(out.tolist(), skip_special_tokens=True)
            for (source, target), text in zip(part, texts, strict=True):
                total[lang] += 1
                if text == target:
                    correct[lang] += 1
                elif len(failures) < 6:
                    failures.append((source, lang, target, text))
    model.train()
    acc = {lang: correct[lang] / max(1, total[lang]) for lang in LANGUAGES}
    acc["all"] = sum(correct.values()) / max(1, sum(total.values()))
    for source, lang, target, text in failures:
        log.info("eval miss [%s] %r -> %r (want %r)", lang, source, text, target)
    return acc


# ---------------------------------------------------------------- persistence


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    path: Path, model, optimizer, scheduler, step: int, stream: BatchStream, wall_s: float
) -> None:
    atomic_torch_save(
        {
            "wall_s": wall_s,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "stream": stream.state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
        },
        path,
    )


def save_hf(model, tokenizer: Tokenizer, out: Path) -> None:
    """Hugging Face directory: model, generation config, tokenizer.json and its fast wrapper."""
    from transformers import PreTrainedTokenizerFast

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[language_token(lang) for lang in LANGUAGES],
    )
    fast.save_pretrained(tmp)
    tokenizer.save(str(tmp / "tokenizer.json"))
    if out.exists():
        import shutil

        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


# ---------------------------------------------------------------- plan


def measure_throughput(model, tokenizer, cfg: TrainConfig, exclude) -> tuple[float, float]:
    """Steps/s and label tokens/s of a throwaway copy, so the real run stays untouched."""
    probe = copy.deepcopy(model)
    optimizer = make_optimizer(probe, cfg)
    stream = BatchStream(tokenizer, cfg, exclude, seed=cfg.seed + 1)
    warm, timed = 5, 30
    for _ in range(warm):
        train_step(probe, optimizer, stream.next(), cfg)
    tokens = 0
    t0 = time.monotonic()
    for _ in range(timed):
        batch = stream.next()
        tokens += int((batch["labels"] != -100).sum())
        train_step(probe, optimizer, batch, cfg)
    elapsed_s = time.monotonic() - t0
    # The timed steps came from a chunk made before them; making chunks (num2words on the
    # CPU) is part of every step's cost too, negligible next to a CPU step, not a GPU one.
    t0 = time.monotonic()
    batches = len(stream._make_chunk(stream.chunk + 1))
    elapsed_s += timed * (time.monotonic() - t0) / max(1, batches)
    return timed / elapsed_s, tokens / elapsed_s


def make_plan(steps_per_s: float, tokens_per_s: float, cfg: TrainConfig, steps: int | None) -> Plan:
    total = steps if steps is not None else max(10, int(cfg.minutes_budget * 60 * steps_per_s))
    return Plan(
        total_steps=total,
        warmup_steps=max(1, int(total * cfg.warmup_fraction)),
        ckpt_every_steps=max(1, int(cfg.ckpt_minutes * 60 * steps_per_s)),
        eval_every_steps=max(1, int(cfg.eval_minutes * 60 * steps_per_s)),
        measured_steps_per_s=steps_per_s,
        measured_label_tokens_per_s=tokens_per_s,
    )


# ---------------------------------------------------------------- main


def setup_logging(out: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/verbalizer"))
    parser.add_argument("--minutes-budget", type=float, default=None, help="sizes the step plan")
    parser.add_argument("--steps", type=int, default=None, help="fixed step count (skips timing)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: small data, few steps")
    parser.add_argument(
        "--stop-after-steps", type=int, default=None, help="exit early (to exercise resume)"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to train (auto: a CUDA GPU if torch sees one, else the CPU)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="start from this tokenizer.json instead of training one (e.g. the shipped one, "
        "so token ids and input lengths stay those the simulator's workload table was made of)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)

    cfg = TrainConfig()
    if args.smoke:
        cfg = dataclasses.replace(
            cfg,
            tokenizer_examples=2000,
            chunk_examples=400,
            eval_examples=32,
            final_eval_examples=64,
        )
    if args.minutes_budget is not None:
        cfg = dataclasses.replace(cfg, minutes_budget=args.minutes_budget)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    # A GPU run needs no governor: the CPU only feeds it. It is not bit-identical to a CPU run
    # (kernels differ), but it takes the same plan, data and schedule.
    governor = ThreadGovernor(cfg.threads) if device.type == "cpu" else None
    torch.set_num_interop_threads(1)
    log.info("training on %s", device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)

    tok_path = out / "tokenizer.json"
    if args.tokenizer is not None and not tok_path.exists():
        atomic_write_text(tok_path, args.tokenizer.read_text(encoding="utf-8"))
        log.info("tokenizer from %s", args.tokenizer)
    if tok_path.exists():
        tokenizer = Tokenizer.from_file(str(tok_path))
    else:
        t0 = time.monotonic()
        tokenizer = build_tokenizer(tokenizer_corpus(cfg.tokenizer_examples), cfg.vocab_size)
        tokenizer.save(str(tok_path) + ".tmp")
        os.replace(str(tok_path) + ".tmp", tok_path)
        log.info("tokenizer trained in %.1f s", time.monotonic() - t0)
    vocab = tokenizer.get_vocab_size()
    log.info(
        "vocab %d, special ids %s", vocab, {t: tokenizer.token_to_id(t) for t in (PAD, EOS, UNK)}
    )

    exclude = reserved_sources()
    heldout = heldout_set(cfg.final_eval_examples)
    heldout_round = heldout_round_set(cfg.final_eval_examples)
    model = build_model(cfg, vocab).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model params %d", n_params)

    plan_path = out / "plan.json"
    if plan_path.exists():
        plan = Plan(**json.loads(plan_path.read_text()))
        log.info("plan (resumed) %s", plan)
    else:
        if args.steps is not None or args.smoke:
            plan = make_plan(1.0, 0.0, cfg, args.steps or 40)
            plan = dataclasses.replace(plan, ckpt_every_steps=10, eval_every_steps=20)
        else:
            steps_per_s, tokens_per_s = measure_throughput(model, tokenizer, cfg, exclude)
            log.info("measured %.3f steps/s, %.0f label tokens/s", steps_per_s, tokens_per_s)
            plan = make_plan(steps_per_s, tokens_per_s, cfg, None)
        atomic_write_text(plan_path, json.dumps(dataclasses.asdict(plan), indent=2))
        log.info("plan %s", plan)

    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(plan, cfg))
    stream = BatchStream(tokenizer, cfg, exclude, seed=cfg.seed)
    step = 0
    wall_before_s = 0.0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state(state["stream"])
        step = state["step"]
        wall_before_s = state.get("wall_s", 0.0)
        torch.set_rng_state(state["torch_rng"].cpu())
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        log.info("resumed from step %d", step)

    model.train()
    t_start = time.monotonic()
    window_t, window_tokens, window_steps, window_loss = time.monotonic(), 0, 0, 0.0
    accuracy: dict[str, float] = {}

    def checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_path,
            model,
            optimizer,
            scheduler,
            step,
            stream,
            wall_before_s + time.monotonic() - t_start,
        )

    while step < plan.total_steps:
        batch = stream.next()
        window_tokens += int((batch["labels"] != -100).sum())
        window_loss += train_step(model, optimizer, batch, cfg)
        scheduler.step()
        step += 1
        if governor is not None:
            governor.update()
        window_steps += 1
        if step % 50 == 0 or args.smoke:
            elapsed_s = time.monotonic() - window_t
            log.info(
                "step %d/%d loss %.4f lr %.2e %.0f tok/s %.2f steps/s",
                step,
                plan.total_steps,
                window_loss / window_steps,
                scheduler.get_last_lr()[0],
                window_tokens / elapsed_s,
                window_steps / elapsed_s,
            )
            window_t, window_tokens, window_steps, window_loss = time.monotonic(), 0, 0, 0.0
        if step % plan.ckpt_every_steps == 0 or step == plan.total_steps:
            checkpoint(step)
            log.info("checkpoint step %d", step)
        if step % plan.eval_every_steps == 0 and step < plan.total_steps:
            accuracy = evaluate(model, tokenizer, heldout[: cfg.eval_examples], cfg)
            log.info("eval step %d exact match %s", step, json.dumps(accuracy))
            save_hf(model, tokenizer, out / "hf_latest")
            window_t = time.monotonic()
        if args.stop_after_steps is not None and step >= args.stop_after_steps:
            checkpoint(step)
            log.info("stopping early at step %d (checkpoint saved)", step)
            return 0

    accuracy = evaluate(model, tokenizer, heldout, cfg)
    log.info("final eval (%d held-out) exact match %s", len(heldout), json.dumps(accuracy))
    round_accuracy = evaluate(model, tokenizer, heldout_round, cfg)
    log.info(
        "final eval (%d round held-out) exact match %s",
        len(heldout_round),
        json.dumps(round_accuracy),
    )
    save_hf(model, tokenizer, out / "hf")
    summary = {
        "steps": step,
        "wall_minutes": (wall_before_s + time.monotonic() - t_start) / 60,
        "heldout_examples": len(heldout),
        "heldout_exact_match": accuracy,
        "heldout_round_exact_match": round_accuracy,
        "device": str(device),
        "params": n_params,
        "vocab_size": vocab,
        "seeds": {"train": cfg.seed, "heldout": HELDOUT_SEED},
        "config": dataclasses.asdict(cfg),
        "plan": dataclasses.asdict(plan),
        "language_token_ids": LANGUAGE_TOKEN_IDS,
    }
    atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
    log.info("wrote %s", out / "hf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
