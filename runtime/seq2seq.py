"""``Seq2Seq``: the one obvious entry point — load a bundle, generate text or ids.

    model = Seq2Seq.load("path/to/bundle")
    model.generate("1984 42", target="fr").text

Generation is split into the two halves Tandem routes between machines: ``encode`` (always on
the device) and ``decode``/``stream`` from hidden states (on the device or in the cloud). Both
halves use the same ``DecodeBatch``, so every route yields the same tokens.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.errors import InputError
from tandem.runtime.bundle import ModelBundle, load_bundle
from tandem.runtime.decoding import DecodeBatch, GenerationParams, StepResult
from tandem.runtime.options import SessionConfig


@dataclass(frozen=True)
class Generation:
    """The result of one request."""

    ids: list[int]
    """Generated token ids, forced first token included, decoder start token excluded."""
    text: str | None
    """Decoded text without special tokens; None for a bundle without a tokenizer."""
    finish: str
    """``eos`` or ``length``."""


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
