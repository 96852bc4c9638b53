"""``Seq2Seq``: the one obvious entry point — load a bundle, generate text or ids.

    model = Seq2Seq.load("path/to/bundle")
    model.generate("1984 42", target="fr").text
    Seq2Seq.load("path/to/whisper-bundle").transcribe(read_wav("speech.wav"), "en").text

Generation is split into the two halves Tandem routes between machines: ``encode`` (always on
the device) and ``decode``/``stream`` from hidden states (on the device or in the cloud). Both
halves use the same ``DecodeBatch``, so every route yields the same tokens.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.errors import InputError
from tandem.runtime import speech
from tandem.runtime.audio import log_mel, resample, windows
from tandem.runtime.bundle import ModelBundle, load_bundle
from tandem.runtime.decoding import DecodeBatch, GenerationParams, StepResult
from tandem.runtime.options import SessionConfig
from tandem.runtime.wav import Audio


@dataclass(frozen=True)
class Generation:
    """The result of one request."""

    ids: list[int]
    """Generated token ids, forced first token included, decoder start token excluded."""
    text: str | None
    """Decoded text without special tokens; None for a bundle without a tokenizer."""
    finish: str
    """``eos`` or ``length``."""


@dataclass(frozen=True)
class Transcription:
    """The result of transcribing one audio input, window by window."""

    ids: list[int]
    """Generated ids after each window's prompt, each window's final EOS dropped (as
    transformers' Whisper ``generate`` returns them), the windows' ids concatenated."""
    text: str | None
    """The windows' texts, stripped and joined with one space; None without a tokenizer."""
    language: str | None
    """The language decoded (given or detected); None for an English-only model."""
    segments: list[Generation]
    """Per decoding run: its prompt after the start token, then its generated ids. A window is
    one run, or more where the model emits timestamp tokens (see ``speech.split_segments``)."""

    @property
    def finish(self) -> str:
        """``eos`` when every run ended on EOS; ``length`` when one was cut short."""
        return "eos" if all(w.finish == "eos" for w in self.segments) else "length"


class Seq2Seq:
    """A loaded model bundle with encode/decode/generate."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.fingerprint = bundle.fingerprint
        self.tokenizer = bundle.tokenizer
        self._encoder = bundle.sessions["encoder"]
        self._keys = itertools.count()

    @classmethod
    def load(cls, path: str | Path, session_config: SessionConfig | None = None) -> Seq2Seq:
        return cls(load_bundle(path, session_config))

    # -- the device half ---------------------------------------------------------------------

    @property
    def is_speech(self) -> bool:
        return self.manifest.speech is not None

    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InputError(
                f"bundle {self.manifest.name!r} has no tokenizer; pass token ids instead of text"
            )
        ids = self.tokenizer.encode(text)
        self.check_source(ids)
        return ids

    def check_source(self, ids: list[int]) -> None:
        dims = self.manifest.dims
        if not ids:
            raise InputError("source is empty")
        if len(ids) > dims.max_source_length:
            raise InputError(
                f"source has {len(ids)} tokens; the model allows at most {dims.max_source_length}"
            )
        bad = next((t for t in ids if not 0 <= t < dims.vocab_size), None)
        if bad is not None:
            raise InputError(f"source token {bad} is outside the vocabulary [0, {dims.vocab_size})")

    def encode(self, ids: list[int]) -> np.ndarray:
        """Encoder hidden states (S, D) float32 of one source."""
        if self.is_speech:
            raise InputError(f"bundle {self.manifest.name!r} is a speech model; give it audio")
        self.check_source(ids)
        input_ids = np.array([ids], dtype=np.int64)  # (1, S)
        (hidden,) = self._encoder.run(
            ["hidden_states"],
            {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)},
        )
        return hidden[0]  # (S, D)

    def language_token(self, target: str | None) -> int | None:
        """Forced first token for a target language (None: the bundle's default, if any)."""
        if target is None:
            return self.manifest.default_forced_first_token
        return self.manifest.language_token(target)

    def params(
        self,
        target: str | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
        prefix: tuple[int, ...] | list[int] = (),
    ) -> GenerationParams:
        params = GenerationParams(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            forced_first_token=self.language_token(target),
            prefix=tuple(prefix),
        )
        return params.resolved(self.manifest)

    # -- speech: the device half ---------------------------------------------------------------

    def features(self, audio: Audio | np.ndarray) -> list[np.ndarray]:
        """Log-mel windows (n_mels, n_frames) float32 of audio (an ndarray is at the model's rate)."""
        front = self._audio_features()  # all windows at once: for tests and tools
        if isinstance(audio, Audio):
            samples = resample(audio.samples, audio.sampling_rate, front.sampling_rate)
        else:
            samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise InputError(f"audio must be mono samples (n,), got shape {samples.shape}")
        return [log_mel(w, front) for w in windows(samples, front)]

    def encode_features(self, features: np.ndarray) -> np.ndarray:
        """Encoder hidden states (frames / 2, D) float32 of one window's features."""
        front = self._audio_features()
        want = (front.n_mels, front.n_frames)
        if features.shape != want:
            raise InputError(f"features must have shape {want}, got {tuple(features.shape)}")
        if not np.isfinite(features).all():
            raise InputError("features contain NaN or infinity")
        batch = np.ascontiguousarray(features[None], dtype=np.float32)  # (1, n_mels, frames)
        (hidden,) = self._encoder.run(["hidden_states"], {"input_features": batch})
        return hidden[0]  # (S, D)

    def detect_language(self, hidden: np.ndarray) -> str:
        """The most likely language token after the start token, as transformers detects it."""
        if not self.manifest.languages:
            raise InputError(f"bundle {self.manifest.name!r} has no language tokens to detect")
        dims = self.manifest.dims
        sessions = self.bundle.sessions
        names = [f"{kv}_{i}" for i in range(dims.decoder_layers) for kv in ("key", "value")]
        cross = sessions["cache_init"].run(
            [f"cross_{n}" for n in names], {"hidden_states": hidden[None].astype(np.float32)}
        )
        empty = np.zeros((1, dims.num_heads, 0, dims.head_dim), dtype=np.float32)
        feeds = {
            "input_ids": np.array([[self.manifest.tokens.decoder_start]], dtype=np.int64),
            "position_ids": np.zeros((1, 1), dtype=np.int64),
            "self_mask": np.zeros((1, 0), dtype=np.int64),
            "encoder_mask": np.ones((1, hidden.shape[0]), dtype=np.int64),
            **{f"past_{n}": empty for n in names},
            **dict(zip([f"cross_{n}" for n in names], cross, strict=True)),
        }
        (logits,) = sessions["decoder"].run(["logits"], feeds)  # (1, V)
        codes = list(self.manifest.languages)
        ids = np.array([self.manifest.languages[c] for c in codes])
        return codes[int(np.argmax(logits[0, ids]))]

    def speech_params(
        self, language: str | None = None, max_new_tokens: int | None = None
    ) -> GenerationParams:
        """Greedy params for one window: the Whisper prompt forced, the length bound.

        ``language`` None on a multilingual model must be resolved first (``detect_language``).
        """
        lang = speech.language_token(self.manifest, language)
        multilingual = self.manifest.speech.multilingual
        if multilingual and lang is None and self.manifest.languages:
            raise InputError("a multilingual model needs a language (see detect_language)")
        prompt = speech.window_prompt(self.manifest, lang)  # the start token is the engine's
        new = speech.max_new_tokens(self.manifest, len(prompt) + 1, max_new_tokens)
        return self._prompted(prompt, new)

    def _prompted(self, prompt: tuple[int, ...], new: int) -> GenerationParams:
        """``new`` tokens after a forced ``prompt``; its first token is also sent as the forced
        first token, from which the cloud derives the whole prompt (``speech.prompts``)."""
        return GenerationParams(
            max_new_tokens=len(prompt) + new,
            forced_prompt=prompt,
            forced_first_token=prompt[0] if prompt else None,
        ).resolved(self.manifest)

    def transcribe(
        self,
        audio: Audio | np.ndarray,
        language: str | None = None,
        max_new_tokens: int | None = None,
    ) -> Transcription:
        """Transcribe audio window by window on this machine (greedy, no timestamps).

        Without ``language`` a multilingual model detects it from the first window, as
        transformers does; an English-only model needs none. ``max_new_tokens`` bounds each window.
        """
        runs = self.transcription(audio, language, max_new_tokens)
        while True:
            try:
                next(runs)
            except StopIteration as done:
                return done.value

    def transcription(
        self,
        audio: Audio | np.ndarray,
        language: str | None = None,
        max_new_tokens: int | None = None,
        *,
        encode: Callable[[np.ndarray], np.ndarray] | None = None,
        decode: Callable[[np.ndarray, GenerationParams], Generation] | None = None,
    ) -> Generator[list[int], None, Transcription]:
        """``transcribe`` as a generator: yields each decoding run's kept ids as the run ends,
        returns the ``Transcription``.

        ``encode(features)`` → hidden states and ``decode(hidden, params)`` → ``Generation``
        (start tokens first, as ``decode`` gives them) default to this machine's. The edge
        agent passes its own, which route every run (local, cloud or handoff), so all routes
        share this one loop and give the same ids.
        """
        if not self.is_speech:
            raise InputError(f"bundle {self.manifest.name!r} is a text model; give it text")
        encode = encode or self.encode_features
        decode = decode or self.decode
        if language is not None:
            speech.language_token(self.manifest, language)  # fail before any work
        front = self._audio_features()
        if isinstance(audio, Audio):
            samples = resample(audio.samples, audio.sampling_rate, front.sampling_rate)
        else:
            samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise InputError(f"audio must be mono samples (n,), got shape {samples.shape}")
        tokens = self.manifest.tokens
        prompt = None
        first_ts = speech.timestamp_begin(self.manifest)
        stride = front.n_frames // self.manifest.dims.max_source_length  # frames per position
        done, ids, texts = [], [], []
        for window in windows(samples, front):  # one window in memory at a time
            # Each window is decoded as transformers decodes that window alone: its
            # max_length starts afresh and grows with each run (see speech.grown_max_length).
            feats = log_mel(window, front)  # (n_mels, n_frames)
            grown = self.manifest.speech.max_length or 20
            seek = 0
            while seek < front.n_frames:
                # As transformers: the rest of the window from ``seek``, zero-padded.
                n = front.n_frames - seek
                segment = np.zeros_like(feats)
                segment[:, :n] = feats[:, seek:]
                hidden = encode(segment)  # (S, D) float32
                if prompt is None:
                    if language is None and self.manifest.speech.multilingual:
                        language = self.detect_language(hidden)  # first segment, as transformers
                    prompt = self.speech_params(language, max_new_tokens).forced_prompt
                new_tokens = speech.max_new_tokens(
                    self.manifest, len(prompt) + 1, max_new_tokens, grown
                )
                grown = speech.grown_max_length(self.manifest, len(prompt) + 1, grown)
                generation = decode(hidden, self._prompted(prompt, new_tokens))
                done.append(generation)
                new = speech.as_transformers(generation.ids[len(prompt) :], tokens.eos, tokens.pad)
                kept, advance = speech.split_segments(new, first_ts, n, stride)
                ids += kept
                yield kept
                text = self.detokenize(kept)
                if text is not None and text.strip():
                    texts.append(text.strip())
                if advance <= 0:
                    break  # transformers would decode the same segment forever
                seek += advance
        text = " ".join(texts) if self.tokenizer is not None else None
        lang = language if self.manifest.speech.multilingual else None
        return Transcription(ids=ids, text=text, language=lang, segments=done)

    def _audio_features(self):
        if self.manifest.audio is None:
            raise InputError(f"bundle {self.manifest.name!r} is a text model; give it text")
        return self.manifest.audio

    # -- the decoding half (device or cloud) ---------------------------------------------------

    def new_batch(self) -> DecodeBatch:
        return DecodeBatch(self.bundle.sessions, self.manifest)

    def stream(self, hidden: np.ndarray, params: GenerationParams) -> Iterator[StepResult]:
        """Yield new tokens one by one from hidden states (S, D); the last has ``finish`` set."""
        batch = self.new_batch()
        key = next(self._keys)
        results = batch.add(key, hidden, params)
        while True:
            for result in results:
                yield result
                if result.finish is not None:
                    return
            results = batch.step()

    def decode(self, hidden: np.ndarray, params: GenerationParams) -> Generation:
        new = []
        finish = "length"
        for result in self.stream(hidden, params):
            new.append(result.token)
            finish = result.finish or finish
        ids = [*params.start_tokens(), *new]
        return Generation(ids=ids, text=self.detokenize(ids), finish=finish)

    def decode_many(
        self, items: list[tuple[np.ndarray, GenerationParams]], batch_size: int = 32
    ) -> list[list[int]]:
        """Greedy ids (start tokens included) for many (hidden, params) pairs, ``batch_size``
        rows per ``DecodeBatch`` — equal to decoding each alone, far cheaper for evaluations."""
        out: list[list[int]] = []
        for start in range(0, len(items), batch_size):
            batch = self.new_batch()
            rows: dict[int, list[int]] = {}
            for i, (hidden, params) in enumerate(items[start : start + batch_size]):
                rows[i] = params.resolved(self.manifest).start_tokens()
                for r in batch.add(i, hidden, params):
                    rows[i].append(r.token)
            while len(batch):
                for r in batch.step():
                    rows[r.key].append(r.token)
            out += [rows[i] for i in range(len(rows))]
        return out

    def detokenize(self, ids: list[int]) -> str | None:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else None

    # -- both halves ---------------------------------------------------------------------------

    def warm_up(self, src_len: int = 32, steps: int = 32) -> float:
        """Run every part once on a dummy input; returns the milliseconds it took.

        Why: ONNX Runtime's first runs grow its memory arenas and caches, so a fresh process
        answered its first request ~5 ms (a third) slower than the next ones. A daemon calls
        this before it serves, so that cost is not a user's. The sizes bound what gets warm:
        a source of ``src_len`` tokens and ``steps`` decoder steps (capped by the bundle), one
        row. Token ids are arbitrary in-vocabulary ones; the output is thrown away.
        """
        dims = self.manifest.dims
        src_len = max(1, min(src_len, dims.max_source_length))
        steps = max(2, min(steps, dims.max_target_length - 1))
        ids = [4 + i % max(1, dims.vocab_size - 4) for i in range(src_len)]
        ids = [t if t < dims.vocab_size else 0 for t in ids]
        started = time.perf_counter()
        if self.is_speech:
            front = self.manifest.audio
            hidden = self.encode_features(np.zeros((front.n_mels, front.n_frames), np.float32))
            params = GenerationParams(max_new_tokens=steps, min_new_tokens=steps).resolved(
                self.manifest
            )
            for _ in self.stream(hidden, params):
                pass
            return (time.perf_counter() - started) * 1000.0
        params = GenerationParams(
            max_new_tokens=steps,
            min_new_tokens=steps,
            forced_first_token=self.manifest.default_forced_first_token,
        ).resolved(self.manifest)
        for _ in self.stream(self.encode(ids), params):
            pass
        return (time.perf_counter() - started) * 1000.0

    def generate(
        self,
        source: str | list[int],
        target: str | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
        prefix: tuple[int, ...] | list[int] = (),
    ) -> Generation:
        """Encode ``source`` (text, or token ids) and decode greedily on this machine."""
        ids = self.tokenize(source) if isinstance(source, str) else list(source)
        params = self.params(target, max_new_tokens, min_new_tokens, prefix)
        return self.decode(self.encode(ids), params)
