"""Speech data recipe: the verbalizer's numbers, spoken by ``espeak-ng``, as 16 kHz mono audio.

What the speech model hears and must write is defined here, as for the verbalizer in
``tools/verbalizer_data.py``, whose generators, languages and targets it reuses:

- an utterance is 1 to ``MAX_NUMBERS`` of the verbalizer's numbers (its first numbers, so each
  number keeps the verbalizer's log-uniform magnitude); fewer than the verbalizer's 4, so that
  an utterance fits a short window (``WINDOW_S``) instead of Whisper's 30 s;
- its transcript is the verbalizer's target text (``target_text``) in one of its ``LANGUAGES``,
  and that text is what ``espeak-ng`` speaks (the comma becomes a pause);
- each utterance varies the voice variant, the speed (words per minute), the pitch, the level
  and an additive white noise (signal-to-noise ratio), all drawn from a caller-owned seed, so
  a dataset is a deterministic function of its seed (and of the espeak-ng version);
- audio longer than the window is dropped and drawn again, deterministically;
- the held-out set is drawn from its own seed, with languages round-robin and distinct
  sources, and training skips its sources.

A dataset on disk is ``meta.json``, ``transcripts.jsonl`` (one record per utterance: source,
language, text, voice settings, shard and position) and ``audio-NNNNN.npz`` shards holding the
int16 samples concatenated, with their offsets. Features are not stored: the log-mel front end
is ``tandem.runtime.audio.log_mel``, the runtime's own, applied when the data is read.

    python tools/speech_data.py --out build/speech/data --train 20000 --heldout 400
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tandem.errors import TandemError  # noqa: E402
from tandem.runtime.audio import resample  # noqa: E402
from tandem.runtime.wav import read_wav  # noqa: E402
from tools.verbalizer_data import (  # noqa: E402
    LANGUAGES,
    sample_numbers,
    sample_training_numbers,
    source_text,
    target_text,
)

log = logging.getLogger(__name__)

SAMPLING_RATE = 16_000
"""What Whisper's front end takes."""

WINDOW_S = 10.0
"""Longest utterance kept, and the model's window: ``max_source_positions`` 500 (1000 frames).
Two numbers of nine digits in German at the slowest speed take about 10 s."""

MAX_NUMBERS = 2

SPEECH_TRAIN_SEED = 31_337
SPEECH_HELDOUT_SEED = 424_243
"""Distinct from each other and from the verbalizer's seeds."""

HELDOUT_RESERVED = 2000
"""Training skips the sources of ``heldout_utterances(HELDOUT_RESERVED)``; a shorter held-out
set is a prefix of it, so unseen too."""

ESPEAK_VOICES: dict[str, str] = {"en": "en-us", "fr": "fr-fr", "de": "de", "es": "es"}
VARIANTS: tuple[str, ...] = ("", "m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")
"""espeak-ng voice variants (``VOICE+VARIANT``): the nearest thing it has to other speakers."""

SPEED_WPM = (130, 210)
PITCH = (25, 75)
SNR_DB = (10.0, 40.0)
PEAK = (0.3, 0.9)
SHARD_UTTERANCES = 2000


class EspeakMissing(TandemError):
    """espeak-ng is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Utterance:
    """One spoken example: what is said, how, and the transcript the model must write."""

    source: str
    """The numbers in digits, as the verbalizer reads them."""
    lang: str
    text: str
    """The transcript: the verbalizer's target for ``source`` in ``lang``."""
    voice: str
    speed_wpm: int
    pitch: int
    peak: float
    snr_db: float
    noise_seed: int


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakMissing(
            "espeak-ng is not installed (it speaks the training data); on Debian or Ubuntu: "
            "apt-get install espeak-ng"
        )
    return path


def espeak_version() -> str:
    out = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _draw(rng: random.Random, lang: str, draw: Callable[[random.Random], list[int]]) -> Utterance:
    numbers = draw(rng)[: rng.randint(1, MAX_NUMBERS)]
    variant = rng.choice(VARIANTS)
    voice = ESPEAK_VOICES[lang] + (f"+{variant}" if variant else "")
    return Utterance(
        source=source_text(numbers),
        lang=lang,
        text=target_text(numbers, lang),
        voice=voice,
        speed_wpm=rng.randint(*SPEED_WPM),
        pitch=rng.randint(*PITCH),
        peak=round(rng.uniform(*PEAK), 4),
        snr_db=round(rng.uniform(*SNR_DB), 2),
        noise_seed=rng.getrandbits(32),
    )


def speak(utt: Utterance, tmp_dir: Path) -> np.ndarray:
    """16 kHz mono float32 samples of ``utt``: espeak-ng, resampled, levelled, noise added."""
    wav = tmp_dir / "utt.wav"
    subprocess.run(
        [
            espeak_binary(),
            "-v",
            utt.voice,
            "-s",
            str(utt.speed_wpm),
            "-p",
            str(utt.pitch),
            "-w",
            str(wav),
            utt.text,
        ],
        check=True,
        capture_output=True,
    )
    audio = read_wav(wav)
    x = resample(audio.samples, audio.sampling_rate, SAMPLING_RATE).astype(np.float64)
    x *= utt.peak / max(float(np.abs(x).max()), 1e-6)
    rms = float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    noise = np.random.default_rng(utt.noise_seed).standard_normal(len(x))
    x += noise * rms * 10.0 ** (-utt.snr_db / 20.0)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _spoken(
    rng: random.Random,
    languages: Callable[[int], str],
    draw: Callable[[random.Random], list[int]],
    skip: Callable[[str], bool],
) -> Iterator[tuple[Utterance, np.ndarray]]:
    """Endless (utterance, samples) stream; utterances too long for the window are dropped."""
    limit = int(WINDOW_S * SAMPLING_RATE)
    with tempfile.TemporaryDirectory() as tmp:
        count = 0
        while True:
            utt = _draw(rng, languages(count), draw)
            if skip(utt.source):
                continue
            samples = speak(utt, Path(tmp))
            if len(samples) > limit:
                log.info("dropped %.1f s utterance %r", len(samples) / SAMPLING_RATE, utt.text)
                continue
            count += 1
            yield utt, samples


def heldout_utterances(n: int, seed: int = SPEECH_HELDOUT_SEED) -> list[Utterance]:
    """The first ``n`` held-out draws, without audio and so without the drop rule.

    Languages do not change what the RNG draws, so ``heldout_set`` draws the same sources in
    the same order and only drops the too-long ones: these are a superset of its sources (as
    long as it needs at most ``n`` draws), which is what training must skip.
    """
    return [u for u, _ in _heldout(n, seed, speak_audio=False)]


def _heldout(n: int, seed: int, speak_audio: bool = True):
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[Utterance, np.ndarray | None]] = []
    limit = int(WINDOW_S * SAMPLING_RATE)
    with tempfile.TemporaryDirectory() as tmp:
        while len(out) < n:
            utt = _draw(rng, LANGUAGES[len(out) % len(LANGUAGES)], sample_numbers)
            if utt.source in seen:
                continue
            seen.add(utt.source)
            samples = speak(utt, Path(tmp)) if speak_audio else None
            if samples is not None and len(samples) > limit:
                continue
            out.append((utt, samples))
    return out


def heldout_set(n: int, seed: int = SPEECH_HELDOUT_SEED) -> list[tuple[Utterance, np.ndarray]]:
    """``n`` spoken held-out examples; a shorter set is a prefix of a longer one."""
    return _heldout(n, seed)


def reserved_sources() -> frozenset[str]:
    return frozenset(u.source for u in heldout_utterances(HELDOUT_RESERVED))


def training_set(
    n: int, seed: int = SPEECH_TRAIN_SEED, exclude: frozenset[str] | None = None
) -> list[tuple[Utterance, np.ndarray]]:
    """``n`` spoken training examples, languages uniform, held-out sources skipped."""
    exclude = reserved_sources() if exclude is None else exclude
    rng = random.Random(seed)
    stream = _spoken(
        rng, lambda _i: rng.choice(LANGUAGES), sample_training_numbers, exclude.__contains__
    )
    return [next(stream) for _ in range(n)]


# ---------------------------------------------------------------- on disk


def write_dataset(
    out: Path, examples: list[tuple[Utterance, np.ndarray]], meta: dict | None = None
) -> None:
    """``out``/meta.json, transcripts.jsonl and audio-NNNNN.npz (int16 samples + offsets)."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with open(tmp / "transcripts.jsonl", "w", encoding="utf-8") as f:
        for shard, start in enumerate(range(0, len(examples), SHARD_UTTERANCES)):
            part = examples[start : start + SHARD_UTTERANCES]
            pcm = [np.round(s * 32767.0).astype(np.int16) for _, s in part]
            offsets = np.cumsum([0, *(len(p) for p in pcm)]).astype(np.int64)
            np.savez(tmp / f"audio-{shard:05d}.npz", audio=np.concatenate(pcm), offsets=offsets)
            for index, (utt, _) in enumerate(part):
                record = {"shard": shard, "index": index, **asdict(utt)}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    info = {
        "sampling_rate": SAMPLING_RATE,
        "window_s": WINDOW_S,
        "utterances": len(examples),
        "espeak_ng": espeak_version(),
        **(meta or {}),
    }
    (tmp / "meta.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def read_dataset(path: Path) -> list[tuple[Utterance, np.ndarray]]:
    """(utterance, float32 samples at 16 kHz) pairs of a dataset written by ``write_dataset``."""
    shards: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    with open(path / "transcripts.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            shard, index = record.pop("shard"), record.pop("index")
            if shard not in shards:
                with np.load(path / f"audio-{shard:05d}.npz") as data:
                    shards[shard] = (data["audio"], data["offsets"])
            audio, offsets = shards[shard]
            pcm = audio[offsets[index] : offsets[index + 1]]
            out.append((Utterance(**record), pcm.astype(np.float32) / 32767.0))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/speech/data"))
    parser.add_argument("--train", type=int, default=20_000, help="training utterances")
    parser.add_argument("--heldout", type=int, default=400, help="held-out utterances")
    parser.add_argument("--seed", type=int, default=SPEECH_TRAIN_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        espeak_binary()
    except EspeakMissing as exc:
        print(f"speech_data: error: {exc}", file=sys.stderr)
        return 2
    write_dataset(
        args.out / "heldout",
        heldout_set(args.heldout),
        {"kind": "heldout", "seed": SPEECH_HELDOUT_SEED},
    )
    write_dataset(
        args.out / "train",
        training_set(args.train, args.seed),
        {"kind": "train", "seed": args.seed},
    )
    log.info("wrote %s (%d train, %d held-out)", args.out, args.train, args.heldout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
