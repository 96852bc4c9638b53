"""Greedy decoding with a KV cache, for one sequence or many advancing together.

``DecodeBatch`` is the single decoding engine: local generation runs a batch of one, the cloud's
continuous batching adds and removes sequences between steps. Keeping one code path means the
edge and the cloud produce identical tokens by construction, and a stream cut after k tokens
resumes from exactly those k tokens (prefix forcing).

Cache layout: every decoder layer has a self-attention cache (B, H, P, Dh) whose P slots are
described by ``self_mask`` (B, P) — a row that joined later, or whose prefix was shorter, has
leading slots masked out — and a cross-attention cache (B, H, S, Dh) padded to the longest
source, described by ``encoder_mask`` (B, S). Each step feeds one new token per row; the
decoder returns the caches grown by one slot, which become the next step's past without copies.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from tandem.errors import InputError
from tandem.runtime.manifest import Manifest


@dataclass(frozen=True)
class GenerationParams:
    """What to generate for one request."""

    max_new_tokens: int | None = None
    """Upper bound on generated tokens, forced first token and prefix included; None: the
    model's limit (its longest decoder sequence)."""
    min_new_tokens: int = 0
    """EOS is suppressed until this many tokens exist (benchmarks use it to force a length)."""
    forced_first_token: int | None = None
    """Token forced as the first generated one, e.g. the target-language token of NLLB."""
    eos_token_id: int | None = None
    """Stop token; None means the bundle's EOS."""
    prefix: tuple[int, ...] = ()
    """Tokens already generated (forced token included); decoding continues after them."""
    forced_prompt: tuple[int, ...] = ()
    """Tokens forced at the start of the generated sequence, as ``forced_first_token`` is one:
    Whisper's prompt after the start of transcript (language, task, no-timestamps). Streamed
    and counted like generated tokens; a non-empty ``prefix`` starts with all of them."""

    def resolved(self, manifest: Manifest) -> GenerationParams:
        """These params with defaults filled in from the bundle, validated."""
        params = self
        if self.max_new_tokens is None:
            params = replace(self, max_new_tokens=manifest.dims.max_target_length - 1)
        params.validate(manifest)
        return params

    def validate(self, manifest: Manifest) -> None:
        vocab = manifest.dims.vocab_size
        limit = manifest.dims.max_target_length - 1  # one slot is the decoder start token
        if self.max_new_tokens is None:
            return replace(self, max_new_tokens=limit).validate(manifest)
        if not 1 <= self.max_new_tokens <= limit:
            raise InputError(f"max_new_tokens must be in [1, {limit}], got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InputError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        for name in ("forced_first_token", "eos_token_id"):
            token = getattr(self, name)
            if token is not None and not 0 <= token < vocab:
                raise InputError(f"{name} must be in [0, {vocab}), got {token}")
        if self.forced_prompt:
            first = self.forced_prompt[0]
            if self.forced_first_token is not None and self.forced_first_token != first:
                raise InputError(
                    f"forced_first_token {self.forced_first_token} is not the forced prompt's "
                    f"first token {first}"
                )
            if len(self.forced_prompt) >= self.max_new_tokens:
                raise InputError(
                    f"the forced prompt has {len(self.forced_prompt)} tokens, leaving no room "
                    f"under max_new_tokens ({self.max_new_tokens})"
                )
            for i, token in enumerate(self.forced_prompt):
                if not 0 <= token < vocab:
                    raise InputError(
                        f"forced_prompt[{i}] = {token} is outside the vocabulary [0, {vocab})"
                    )
            if self.prefix and self.prefix[: len(self.forced_prompt)] != self.forced_prompt:
                raise InputError("prefix does not start with the forced prompt")
        if not self.prefix and self.forced_first_token is not None and self.max_new_tokens < 2:
            raise InputError(
                "max_new_tokens must be at least 2 when a first token is forced "
                "(the forced token counts as one)"
            )
        if len(self.prefix) >= self.max_new_tokens:
            raise InputError(
                f"prefix has {len(self.prefix)} tokens, leaving no room under max_new_tokens "
                f"({self.max_new_tokens}); a sequence that long is already complete"
            )
        for i, token in enumerate(self.prefix):
            if not 0 <= token < vocab:
                raise InputError(f"prefix[{i}] = {token} is outside the vocabulary [0, {vocab})")
        eos = self.eos_token_id if self.eos_token_id is not None else manifest.tokens.eos
        if eos in self.prefix:
            raise InputError("prefix contains the EOS token; a finished sequence cannot continue")

    def start_tokens(self) -> list[int]:
        """Generated tokens that exist before the first decoder step."""
        if self.prefix:
            return list(self.prefix)
        if self.forced_prompt:
            return list(self.forced_prompt)
        return [self.forced_first_token] if self.forced_first_token is not None else []


@dataclass
class _Row:
    key: Hashable
    params: GenerationParams
    eos: int
    tokens: list[int] = field(default_factory=list)
    next_position: int = 0
    next_token: int = 0


FINISH_EOS = "eos"
FINISH_LENGTH = "length"


@dataclass(frozen=True, init=False)
class StepResult:
    """One token produced for one sequence; ``finish`` is set on its last token.

    Frozen, with a constructor of its own: a frozen dataclass's generated one sets each field
    through ``object.__setattr__``, several times slower, and a step makes one per row.
    """

    key: Hashable
    index: int
    token: int
    finish: str | None

    def __init__(self, key: Hashable, index: int, token: int, finish: str | None) -> None:
        fields = self.__dict__
        fields["key"] = key
        fields["index"] = index
        fields["token"] = token
        fields["finish"] = finish


class DecodeBatch:
    """Sequences decoded together, one token each per ``step()``; rows join and leave freely."""

    def __init__(self, sessions: dict, manifest: Manifest) -> None:
        self._decoder = sessions["decoder"]
        self._cache_init = sessions["cache_init"]
        self._manifest = manifest
        layers = manifest.dims.decoder_layers
        self._past_names = [f"past_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
        self._cross_names = [f"cross_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
        self._present_names = [
            f"present_{kv}_{i}" for i in range(layers) for kv in ("key", "value")
        ]
        self._outputs = ["logits", *self._present_names]
        self._suppress = np.array(manifest.suppress_tokens, dtype=np.int64)
        # Whisper: tokens never chosen first after the prompt (transformers' begin_index).
        self._begin_suppress = np.zeros(0, dtype=np.int64)
        self._begin_at = -1
        if manifest.speech is not None and manifest.speech.begin_suppress_tokens:
            from tandem.runtime.speech import begin_index

            self._begin_suppress = np.array(manifest.speech.begin_suppress_tokens, dtype=np.int64)
            self._begin_at = begin_index(manifest) - 1  # generated tokens exclude the start token
        self._forced_last = manifest.forced_last_token
        self._rows: list[_Row] = []
        self._past: list[np.ndarray] = []  # per name in _past_names: (B, H, P, Dh)
        self._cross: list[np.ndarray] = []  # per name in _cross_names: (B, H, S, Dh)
        self._self_mask = np.zeros((0, 0), dtype=np.int64)  # (B, P)
        self._encoder_mask = np.zeros((0, 0), dtype=np.int64)  # (B, S)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def keys(self) -> list[Hashable]:
        return [r.key for r in self._rows]

    # -- joining -----------------------------------------------------------------------------

    def add(self, key: Hashable, hidden: np.ndarray, params: GenerationParams) -> list[StepResult]:
        """Join a sequence: build its cross cache, prefill its prefix, pick its next token.

        ``hidden`` is (S, D) float32 encoder output of the valid source positions. Returns the
        results already decided without a batched step: the prefix tokens are not re-emitted,
        but the first new token is (with ``finish`` set if it ends the sequence), so callers
        stream it at once. A sequence that finishes here never occupies a batch row.
        """
        return self.add_many([(key, hidden, params)])

    def add_many(
        self, joins: Sequence[tuple[Hashable, np.ndarray, GenerationParams]]
    ) -> list[StepResult]:
        """Join several sequences at once, as ``add`` does for one, in as few runs as possible.

        Why: a server admitting 16 requests used to pay 16 cache-init runs and 16 prefill runs,
        one row each, before the first batched step; a join cost as much as a whole step of
        the batch. Here all joiners share one cache-init run (sources padded to the longest,
        the padding masked out of cross-attention) and one prefill run per distinct prefix
        length, so a burst of arrivals costs about two runs. Results are those of ``add``
        called once per sequence, in order. Everything is validated before any model run, so
        a bad join raises ``InputError`` and leaves the batch as it was.
        """
        if not joins:
            return []
        rows, hiddens = [], []
        keys = {r.key for r in self._rows}
        for key, hidden, params in joins:
            if key in keys:
                raise ValueError(f"sequence {key!r} is already in the batch")
            keys.add(key)
            params = params.resolved(self._manifest)
            hiddens.append(self._check_hidden(hidden))
            eos = (
                params.eos_token_id
                if params.eos_token_id is not None
                else self._manifest.tokens.eos
            )
            rows.append(_Row(key=key, params=params, eos=eos, tokens=params.start_tokens()))
        src_lens = [h.shape[0] for h in hiddens]
        width = max(src_lens)
        padded = np.zeros((len(rows), width, hiddens[0].shape[1]), dtype=np.float32)
        for i, h in enumerate(hiddens):
            padded[i, : h.shape[0]] = h
        encoder_mask = (np.arange(width)[None, :] < np.array(src_lens)[:, None]).astype(np.int64)
        cross = self._cache_init.run(self._cross_names, {"hidden_states": padded})

        # Rows with the same number of start tokens prefill together (no masking of new
        # tokens exists in the decoder's inputs, so lengths within one run must match).
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(len(row.tokens), []).append(i)
        results: list[StepResult | None] = [None] * len(rows)
        merges = []
        dims = self._manifest.dims
        for length, members in groups.items():
            idx = np.array(members)
            feed_tokens = [[self._manifest.tokens.decoder_start, *rows[i].tokens] for i in members]
            empty = np.zeros((len(members), dims.num_heads, 0, dims.head_dim), dtype=np.float32)
            feeds = {
                "input_ids": np.array(feed_tokens, dtype=np.int64),
                "position_ids": np.tile(np.arange(length + 1, dtype=np.int64), (len(members), 1)),
                "self_mask": np.zeros((len(members), 0), dtype=np.int64),
                "encoder_mask": encoder_mask[idx],
            }
            feeds.update({name: empty for name in self._past_names})
            group_cross = [c[idx] for c in cross] if len(members) < len(rows) else cross
            feeds.update(zip(self._cross_names, group_cross, strict=True))
            logits, *present = self._decoder.run(self._outputs, feeds)
            stay = []
            chosen = self._choose([rows[i] for i in members], logits)
            for j, (i, result) in enumerate(zip(members, chosen, strict=True)):
                rows[i].next_position = length + 1
                results[i] = result
                if result.finish is None:
                    stay.append(j)
            if len(stay) == len(members):  # the usual case: no copies of the caches
                merges.append(([rows[i] for i in members], present, group_cross, encoder_mask[idx]))
            elif stay:
                keep = np.array(stay)
                merges.append(
                    (
                        [rows[members[j]] for j in stay],
                        [p[keep] for p in present],
                        [c[keep] for c in group_cross],
                        encoder_mask[idx[keep]],
                    )
                )
        for merge in merges:  # only once every run succeeded: a failure changes nothing
            self._merge(*merge)
        return [r for r in results if r is not None]

    def _check_hidden(self, hidden: np.ndarray) -> np.ndarray:
        dims = self._manifest.dims
        if hidden.ndim != 2 or hidden.shape[1] != dims.hidden_size or hidden.shape[0] < 1:
            raise InputError(
                f"hidden states must have shape (source_length, {dims.hidden_size}), "
                f"got {tuple(hidden.shape)}"
            )
        if hidden.shape[0] > dims.max_source_length:
            raise InputError(
                f"source has {hidden.shape[0]} positions; the model allows at most "
                f"{dims.max_source_length}"
            )
        return np.asarray(hidden, dtype=np.float32)

    def _merge(
        self,
        rows: list[_Row],
        present: list[np.ndarray],
        cross: list[np.ndarray],
        encoder_mask: np.ndarray,
    ) -> None:
        """Append ``rows`` (their caches all hold the same number of slots) to the batch."""
        new_p = present[0].shape[2]
        # Joiners' cross caches are padded to the longest joiner; trim to what they use.
        src_width = int(encoder_mask.any(axis=0).nonzero()[0].max()) + 1
        cross = [c[:, :, :src_width] for c in cross]
        encoder_mask = encoder_mask[:, :src_width]
        new_mask = np.ones((len(rows), new_p), dtype=np.int64)
        if not self._rows:
            self._past = [np.ascontiguousarray(p) for p in present]
            self._cross = [np.ascontiguousarray(c) for c in cross]
            self._self_mask = new_mask
            self._encoder_mask = np.ascontiguousarray(encoder_mask)
            self._rows = list(rows)
            return
        cur_p = self._self_mask.shape[1]
        width = max(cur_p, new_p)
        # Self caches are left-padded so every row's newest slot is the last column.
        self._past = [
            np.concatenate(
                [_pad_axis(old, 2, width, left=True), _pad_axis(new, 2, width, left=True)]
            )
            for old, new in zip(self._past, present, strict=True)
        ]
        self._self_mask = np.concatenate(
            [
                _pad_axis(self._self_mask, 1, width, left=True),
                _pad_axis(new_mask, 1, width, left=True),
            ]
        )
        s_width = max(self._encoder_mask.shape[1], src_width)
        self._cross = [
            np.concatenate([_pad_axis(old, 2, s_width), _pad_axis(new, 2, s_width)])
            for old, new in zip(self._cross, cross, strict=True)
        ]
        self._encoder_mask = np.concatenate(
            [_pad_axis(self._encoder_mask, 1, s_width), _pad_axis(encoder_mask, 1, s_width)]
        )
        self._rows.extend(rows)

    # -- leaving -----------------------------------------------------------------------------

    def remove(self, key: Hashable) -> bool:
        """Drop a sequence (finished, cancelled, deadline passed); False if it is not here."""
        index = next((i for i, r in enumerate(self._rows) if r.key == key), None)
        if index is None:
            return False
        self._drop([i for i in range(len(self._rows)) if i != index])
        return True

    def _drop(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._past, self._cross = [], []
            self._self_mask = np.zeros((0, 0), dtype=np.int64)
            self._encoder_mask = np.zeros((0, 0), dtype=np.int64)
            return
        idx = np.array(keep)
        mask = self._self_mask[idx]
        first = int(mask.any(axis=0).argmax())  # leading columns no remaining row uses
        enc = self._encoder_mask[idx]
        s_len = int(enc.any(axis=0).nonzero()[0].max()) + 1
        self._self_mask = np.ascontiguousarray(mask[:, first:])
        self._encoder_mask = np.ascontiguousarray(enc[:, :s_len])
        self._past = [np.ascontiguousarray(p[idx][:, :, first:]) for p in self._past]
        self._cross = [np.ascontiguousarray(c[idx][:, :, :s_len]) for c in self._cross]

    # -- stepping ----------------------------------------------------------------------------

    def step(self) -> list[StepResult]:
        """Advance every sequence by one token in one ``session.run``; finished rows leave."""
        if not self._rows:
            return []
        batch = len(self._rows)
        feeds = {
            "input_ids": np.array([[r.next_token] for r in self._rows], dtype=np.int64),
            "position_ids": np.array([[r.next_position] for r in self._rows], dtype=np.int64),
            "self_mask": self._self_mask,
            "encoder_mask": self._encoder_mask,
        }
        feeds.update(zip(self._past_names, self._past, strict=True))
        feeds.update(zip(self._cross_names, self._cross, strict=True))
        logits, *present = self._decoder.run(self._outputs, feeds)
        self._past = present
        self._self_mask = np.concatenate(
            [self._self_mask, np.ones((batch, 1), dtype=np.int64)], axis=1
        )
        results = self._choose(self._rows, logits)
        keep = []
        for i, (row, result) in enumerate(zip(self._rows, results, strict=True)):
            row.next_position += 1
            if result.finish is None:
                keep.append(i)
        self._drop(keep)
        return results

    def _choose(self, rows: list[_Row], logits: np.ndarray) -> list[StepResult]:
        """Greedy choice for each row; records the tokens and which rows are finished.

        ``logits`` (B, V) is this run's own output, one row per entry of ``rows``, and is
        masked in place: copying vocabulary-sized rows was the largest Python cost of a step
        (about 60 us of fresh pages per row for Marian's 58k vocabulary, measured by
        bench/local_decode.py). Masks and the argmax run once for the whole batch, not per row.
        """
        if self._suppress.size:
            logits[:, self._suppress] = -np.inf
        if self._begin_suppress.size:
            first = [i for i, row in enumerate(rows) if len(row.tokens) == self._begin_at]
            if first:
                logits[np.ix_(first, self._begin_suppress)] = -np.inf
        early = [i for i, row in enumerate(rows) if len(row.tokens) < row.params.min_new_tokens]
        if early:
            logits[early, [rows[i].eos for i in early]] = -np.inf
        best = logits.argmax(axis=1).tolist()
        results = []
        for row, token in zip(rows, best, strict=True):
            if (
                self._forced_last is not None
                and len(row.tokens) == row.params.max_new_tokens - 1
                and not (
                    self._forced_last == row.eos and len(row.tokens) < row.params.min_new_tokens
                )
            ):
                # As Hugging Face's forced EOS at the length limit; but decoder.proto promises
                # EOS is suppressed below min_new_tokens, and that promise wins (min == max
                # gives max tokens, not max - 1 and an EOS).
                token = self._forced_last
            row.tokens.append(token)
            row.next_token = token
            finish = None
            if token == row.eos:
                finish = FINISH_EOS
            elif len(row.tokens) >= row.params.max_new_tokens:
                finish = FINISH_LENGTH
            results.append(StepResult(row.key, len(row.tokens) - 1, token, finish))
        return results

    def tokens(self, key: Hashable) -> list[int]:
        """All generated tokens of a sequence still in the batch (prefix included)."""
        for row in self._rows:
            if row.key == key:
                return list(row.tokens)
        raise KeyError(key)


def _pad_axis(array: np.ndarray, axis: int, width: int, left: bool = False) -> np.ndarray:
    missing = width - array.shape[axis]
    if missing <= 0:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (missing, 0) if left else (0, missing)
    return np.pad(array, pad)
