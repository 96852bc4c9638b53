"""Train a small Whisper-architecture model on spoken numbers, resumably, and export it.

Usage::

    python tools/speech_data.py --out build/speech/data                 # synthesize first
    python tools/train_speech.py --data build/speech/data --out build/speech --steps 20000
    python tools/train_speech.py --data build/speech/data --out build/speech --resume
    python tools/train_speech.py ... --device cuda --minutes-budget 10

The model is ``WhisperForConditionalGeneration`` sized for a CPU (``TrainConfig``) with a
10 s window (``max_source_positions`` 500, so 1000 log-mel frames; the exporter and the
runtime's front end take the window from the model, see ``runtime/export.py``). The tokenizer
is the shipped verbalizer's, with Whisper's special tokens appended at the end of the
vocabulary (``WHISPER_SPECIAL``): ``<|notimestamps|>`` is the last id, so no id lies above it
and no generated token is ever read as a timestamp. The verbalizer's ``</s>`` is Whisper's
end of text (and pad).

Teacher forcing matches what ``generate(language=L, task="transcribe")`` and ``tandem
transcribe --language L`` feed: decoder input ``[sot, <|L|>, <|transcribe|>,
<|notimestamps|>, t1..tn]``, labels ``[<|L|>, <|transcribe|>, <|notimestamps|>, t1..tn,
</s>]`` (the language label lets the model detect the language when none is given).

The step count is fixed when a run starts (``plan.json``) and drives the cosine schedule, so a
resumed run takes the same steps as an uninterrupted one. The data order is a function of the
seed: epoch ``e`` is a permutation drawn from ``(seed, e)``, and a checkpoint stores the
position in it. ``--minutes-budget`` stops a run early (checkpoint saved, model exported);
``--resume`` continues it. At the end the model is saved as a Hugging Face directory
(``OUT/hf``) and exported with ``tandem export --hf`` to a bundle (``OUT/bundle``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tandem.runtime.audio import log_mel  # noqa: E402
from tandem.runtime.manifest import AudioFeatures  # noqa: E402
from tools.speech_data import SAMPLING_RATE, WINDOW_S, Utterance, read_dataset  # noqa: E402
from tools.verbalizer_data import EOS_ID, LANGUAGES, PAD_ID, UNK_ID  # noqa: E402

log = logging.getLogger(__name__)

VERBALIZER_TOKENIZER = ROOT / "tandem" / "models" / "verbalizer" / "tokenizer.json"

SOT = "<|startoftranscript|>"
TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS = "<|transcribe|>", "<|translate|>", "<|notimestamps|>"
WHISPER_SPECIAL: tuple[str, ...] = (
    SOT,
    *(f"<|{lang}|>" for lang in LANGUAGES),
    TRANSCRIBE,
    TRANSLATE,
    NO_TIMESTAMPS,
)
"""Appended after the verbalizer's vocabulary, in this order; ``<|notimestamps|>`` last."""

N_MELS, N_FFT, HOP = 80, 400, 160


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 20_261_201
    """Seeds torch (init) and the data order."""
    d_model: int = 192
    encoder_layers: int = 3
    decoder_layers: int = 3
    heads: int = 4
    ffn_dim: int = 768
    max_source_positions: int = int(WINDOW_S * SAMPLING_RATE) // HOP // 2
    """500 for the 10 s window: the encoder's second convolution halves the frames."""
    max_target_positions: int = 128
    """Longest transcript (two nine-digit numbers in French) is about 60 tokens, plus 4."""
    batch_size: int = 32
    peak_lr: float = 1e-3
    min_lr_ratio: float = 0.02
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ckpt_every_steps: int = 200


SMOKE = dict(d_model=64, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=128, batch_size=4)
"""``--smoke``: a model that trains a step in well under a second, for tests."""


@dataclass(frozen=True)
class Plan:
    total_steps: int
    warmup_steps: int
    ckpt_every_steps: int


# ---------------------------------------------------------------- tokenizer


def speech_tokenizer(path: Path = VERBALIZER_TOKENIZER) -> Tokenizer:
    """The verbalizer's tokenizer with ``WHISPER_SPECIAL`` appended as special tokens.

    Its post-processor (which appends ``</s>`` to sources) stays: labels are encoded without
    special tokens and the end of text is added here.
    """
    tokenizer = Tokenizer.from_file(str(path))
    base = tokenizer.get_vocab_size(with_added_tokens=True)
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in WHISPER_SPECIAL])
    for offset, token in enumerate(WHISPER_SPECIAL):
        if tokenizer.token_to_id(token) != base + offset:
            raise RuntimeError(
                f"{token} got id {tokenizer.token_to_id(token)}, not {base + offset}"
            )
    return tokenizer


def prompt_ids(tokenizer: Tokenizer, lang: str) -> list[int]:
    return [tokenizer.token_to_id(t) for t in (SOT, f"<|{lang}|>", TRANSCRIBE, NO_TIMESTAMPS)]


# ---------------------------------------------------------------- data


def audio_features() -> AudioFeatures:
    n_samples = int(WINDOW_S * SAMPLING_RATE)
    return AudioFeatures(
        n_mels=N_MELS,
        sampling_rate=SAMPLING_RATE,
        n_fft=N_FFT,
        hop_length=HOP,
        n_samples=n_samples,
        n_frames=n_samples // HOP,
    )


class BatchStream:
    """Deterministic batches over a finite dataset: epoch ``e`` is a permutation drawn from
    ``random.Random(seed * 1_000_003 + e)``; ``(epoch, offset)`` is the whole cursor state."""

    def __init__(
        self,
        examples: list[tuple[Utterance, np.ndarray]],
        tokenizer: Tokenizer,
        cfg: TrainConfig,
    ) -> None:
        self.examples = examples
        self.cfg = cfg
        self.front = audio_features()
        texts = tokenizer.encode_batch([u.text for u, _ in examples], add_special_tokens=False)
        self.labels = [
            [*prompt_ids(tokenizer, u.lang), *t.ids, EOS_ID]
            for (u, _), t in zip(examples, texts, strict=True)
        ]
        self.epoch = 0
        self.offset = 0
        self._order: list[int] | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = None

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self) -> dict[str, torch.Tensor]:
        picked: list[int] = []
        while len(picked) < self.cfg.batch_size:
            if self._order is None:
                self._order = self._permutation(self.epoch)
            if self.offset >= len(self._order):
                self.epoch, self.offset, self._order = self.epoch + 1, 0, None
                continue
            take = self._order[self.offset : self.offset + self.cfg.batch_size - len(picked)]
            picked += take
            self.offset += len(take)
        return self.collate(picked)

    def collate(self, picked: list[int]) -> dict[str, torch.Tensor]:
        feats = np.stack([log_mel(self.examples[i][1], self.front) for i in picked])
        width = max(len(self.labels[i]) for i in picked) - 1
        decoder_input_ids = torch.full((len(picked), width), EOS_ID, dtype=torch.long)
        labels = torch.full((len(picked), width), -100, dtype=torch.long)
        for row, i in enumerate(picked):
            seq = self.labels[i]
            decoder_input_ids[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            labels[row, : len(seq) - 1] = torch.tensor(seq[1:])
        return {
            "input_features": torch.from_numpy(feats),  # (batch, n_mels, n_frames) float32
            "decoder_input_ids": decoder_input_ids,  # (batch, tgt_len) int64
            "labels": labels,  # (batch, tgt_len) int64, -100 on padding
        }


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig, tokenizer: Tokenizer):
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    sot = tokenizer.token_to_id(SOT)
    special = [tokenizer.token_to_id(t) for t in WHISPER_SPECIAL]
    # Never generated after the prompt: padding, unknown, the verbalizer's language tokens
    # and Whisper's own special tokens.
    suppress = [PAD_ID, UNK_ID, *range(3, 3 + len(LANGUAGES)), *special]
    config = WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=N_MELS,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        max_source_positions=cfg.max_source_positions,
        max_target_positions=cfg.max_target_positions,
        pad_token_id=EOS_ID,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=[EOS_ID],
        dropout=0.0,
        tie_word_embeddings=True,
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        suppress_tokens=suppress,
        begin_suppress_tokens=[EOS_ID],
        no_timestamps_token_id=tokenizer.token_to_id(NO_TIMESTAMPS),
        is_multilingual=True,
        lang_to_id={f"<|{lang}|>": tokenizer.token_to_id(f"<|{lang}|>") for lang in LANGUAGES},
        task_to_id={
            "transcribe": tokenizer.token_to_id(TRANSCRIBE),
            "translate": tokenizer.token_to_id(TRANSLATE),
        },
        max_length=cfg.max_target_positions,
        num_beams=1,
        do_sample=False,
    )
    return model


def lr_lambda(plan: Plan, cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < plan.warmup_steps:
            return (step + 1) / plan.warmup_steps
        span = max(1, plan.total_steps - plan.warmup_steps)
        progress = min(1.0, (step - plan.warmup_steps) / span)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    return factor


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
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


# ---------------------------------------------------------------- persistence


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(path: Path, model, optimizer, scheduler, step, stream, wall_s) -> None:
    tmp = path.with_suffix(".pt.tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "stream": stream.state(),
            "wall_s": wall_s,
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def save_hf(model, tokenizer: Tokenizer, out: Path) -> None:
    """A Hugging Face directory ``tandem export --hf`` reads: model, generation config,
    ``preprocessor_config.json`` of the 10 s window, ``tokenizer.json``."""
    from transformers import WhisperFeatureExtractor

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    WhisperFeatureExtractor(
        feature_size=N_MELS,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP,
        chunk_length=int(WINDOW_S),
        n_fft=N_FFT,
    ).save_pretrained(tmp)
    tokenizer.save(str(tmp / "tokenizer.json"))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def export_bundle(hf: Path, bundle: Path, name: str) -> None:
    """The project's own exporter, as a user runs it."""
    cmd = [sys.executable, "-m", "tandem.cli", "export", "--hf", str(hf), "--out", str(bundle)]
    subprocess.run([*cmd, "--name", name, "--overwrite"], check=True, cwd=ROOT)


# ---------------------------------------------------------------- main


def setup_logging(out: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if getattr(h, "_train_speech", False)]:
        root.removeHandler(handler)  # a second main() in one process (tests) logs once
        handler.close()
    for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(fmt)
        handler._train_speech = True
        root.addHandler(handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("build/speech/data"))
    parser.add_argument("--out", type=Path, default=Path("build/speech"))
    parser.add_argument("--steps", type=int, default=20_000, help="planned steps (fixed at start)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    parser.add_argument(
        "--minutes-budget", type=float, default=None, help="stop (and export) after"
    )
    parser.add_argument("--ckpt-every", type=int, default=None, help="checkpoint every N steps")
    parser.add_argument("--stop-after-steps", type=int, default=None, help="exit early, no export")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, for tests")
    parser.add_argument("--no-export", action="store_true", help="skip the bundle export")
    parser.add_argument("--name", default="speech-numbers", help="bundle name")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to train (auto: a CUDA GPU if torch sees one, else the CPU)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    cfg = TrainConfig(**SMOKE) if args.smoke else TrainConfig()
    if args.ckpt_every is not None:
        cfg = dataclasses.replace(cfg, ckpt_every_steps=args.ckpt_every)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)
    log.info("training on %s", device)

    ckpt_path, plan_path = out / "checkpoint.pt", out / "plan.json"
    if ckpt_path.exists() and not args.resume:
        print(
            f"train_speech: error: {ckpt_path} exists; pass --resume or a new --out",
            file=sys.stderr,
        )
        return 2
    if args.resume and not ckpt_path.exists():
        print(f"train_speech: error: --resume but no {ckpt_path}", file=sys.stderr)
        return 2

    tokenizer = speech_tokenizer()
    examples = read_dataset(args.data / "train")
    log.info("%d training utterances, vocab %d", len(examples), tokenizer.get_vocab_size())
    stream = BatchStream(examples, tokenizer, cfg)
    model = build_model(cfg, tokenizer).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model params %d", n_params)

    if plan_path.exists() and args.resume:
        plan = Plan(**json.loads(plan_path.read_text()))
    else:
        plan = Plan(
            total_steps=args.steps,
            warmup_steps=max(1, int(args.steps * cfg.warmup_fraction)),
            ckpt_every_steps=cfg.ckpt_every_steps,
        )
        atomic_write_text(plan_path, json.dumps(dataclasses.asdict(plan), indent=2))
    log.info("plan %s", plan)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(plan, cfg))
    step, wall_before_s = 0, 0.0
    if args.resume:
        state = torch.load(ckpt_path, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state(state["stream"])
        torch.set_rng_state(state["torch_rng"].cpu())
        step, wall_before_s = state["step"], state["wall_s"]
        log.info("resumed from step %d", step)

    t_start = time.monotonic()
    losses: list[tuple[int, float]] = []

    def checkpoint() -> None:
        wall_s = wall_before_s + time.monotonic() - t_start
        save_checkpoint(ckpt_path, model, optimizer, scheduler, step, stream, wall_s)
        log.info("checkpoint step %d", step)

    model.train()
    window_loss, window_steps, window_t = 0.0, 0, time.monotonic()
    while step < plan.total_steps:
        window_loss += train_step(model, optimizer, stream.next(), cfg)
        scheduler.step()
        step += 1
        window_steps += 1
        if step % 10 == 0 or step == plan.total_steps:
            mean = window_loss / window_steps
            losses.append((step, mean))
            log.info(
                "step %d/%d loss %.4f lr %.2e %.2f steps/s",
                step,
                plan.total_steps,
                mean,
                scheduler.get_last_lr()[0],
                window_steps / (time.monotonic() - window_t),
            )
            window_loss, window_steps, window_t = 0.0, 0, time.monotonic()
        if step % plan.ckpt_every_steps == 0 or step == plan.total_steps:
            checkpoint()
        if args.stop_after_steps is not None and step >= args.stop_after_steps:
            checkpoint()
            log.info("stopping early at step %d (checkpoint saved)", step)
            return 0
        if (
            args.minutes_budget is not None
            and time.monotonic() - t_start > 60 * args.minutes_budget
        ):
            checkpoint()
            log.info("time budget spent at step %d; --resume continues", step)
            break

    save_hf(model.cpu(), tokenizer, out / "hf")
    summary = {
        "steps": step,
        "planned_steps": plan.total_steps,
        "wall_minutes": (wall_before_s + time.monotonic() - t_start) / 60,
        "device": str(device),
        "params": n_params,
        "train_utterances": len(examples),
        "losses": losses,
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
    if not args.no_export:
        export_bundle(out / "hf", out / "bundle", args.name)
        log.info("exported %s", out / "bundle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
