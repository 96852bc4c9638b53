"""Decoding invariants: batched == one-by-one, prefix forcing resumes exactly, limits hold."""

from __future__ import annotations

import re

import numpy as np
import pytest

import hf_models
from tandem.errors import InputError
from tandem.runtime.decoding import GenerationParams
from tandem.runtime.seq2seq import Seq2Seq


@pytest.fixture(scope="module")
def model(marian_bundle) -> Seq2Seq:
    return Seq2Seq.load(marian_bundle)


def _sources(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        [int(t) for t in rng.integers(3, hf_models.VOCAB, size=int(rng.integers(1, 30)))] + [1]
        for _ in range(n)
    ]


def test_batched_equals_one_by_one_with_joins_and_leaves(model):
    """Rows of different source and current lengths, joining mid-way, give identical tokens."""
    sources = _sources(12, seed=3)
    rng = np.random.default_rng(4)
    params = [
        GenerationParams(
            max_new_tokens=int(rng.integers(3, 40)),
            min_new_tokens=int(rng.integers(0, 3)),
            prefix=tuple(int(t) for t in rng.integers(3, 90, size=int(rng.integers(0, 3)))),
        )
        for _ in sources
    ]
    expected = [
        model.decode(model.encode(src), p).ids[len(p.prefix) :]
        for src, p in zip(sources, params, strict=True)
    ]
    batch = model.new_batch()
    got: dict[int, list[int]] = {i: [] for i in range(len(sources))}
    pending = list(range(len(sources)))
    max_rows = 0
    while pending or len(batch):
        # Two rows join before every step: current lengths differ throughout.
        for _ in range(2):
            if pending:
                i = pending.pop(0)
                for r in batch.add(i, model.encode(sources[i]), params[i]):
                    got[r.key].append(r.token)
        max_rows = max(max_rows, len(batch))
        for r in batch.step():
            got[r.key].append(r.token)
    assert max_rows >= 4
    assert [got[i] for i in range(len(sources))] == expected


def test_joining_many_at_once_equals_one_by_one(model):
    """``add_many``: bursts of joiners with mixed source and prefix lengths, some finishing on
    their first token, joining a batch already under way, give the tokens of lone decoding."""
    sources = _sources(14, seed=11)
    rng = np.random.default_rng(12)
    params = [
        GenerationParams(
            max_new_tokens=1 if i % 5 == 4 else int(rng.integers(3, 30)),
            min_new_tokens=int(rng.integers(0, 2)),
            prefix=() if i % 5 == 4 else tuple(int(t) for t in rng.integers(3, 90, size=i % 3)),
        )
        for i in range(len(sources))
    ]
    expected = [
        model.decode(model.encode(src), p).ids[len(p.prefix) :]
        for src, p in zip(sources, params, strict=True)
    ]
    batch = model.new_batch()
    got: dict[int, list[int]] = {i: [] for i in range(len(sources))}
    bursts = [range(0, 6), range(6, 7), range(7, 14)]
    for burst in bursts:
        joins = [(i, model.encode(sources[i]), params[i]) for i in burst]
        for r in batch.add_many(joins):
            got[r.key].append(r.token)
        for _ in range(3):
            for r in batch.step():
                got[r.key].append(r.token)
    while len(batch):
        for r in batch.step():
            got[r.key].append(r.token)
    assert [got[i] for i in range(len(sources))] == expected
    assert len({len(p.prefix) for p in params}) == 3  # the prefill really ran in groups


def test_a_bad_join_in_a_burst_leaves_the_batch_unchanged(model):
    src = model.encode(_sources(1, seed=13)[0])
    batch = model.new_batch()
    batch.add("a", src, GenerationParams(max_new_tokens=10))
    with pytest.raises(InputError, match="hidden states must have shape"):
        batch.add_many(
            [("b", src, GenerationParams(max_new_tokens=10)), ("c", src[:, :3], GenerationParams())]
        )
    assert batch.keys == ["a"]
    with pytest.raises(ValueError, match="already in the batch"):
        batch.add_many([("d", src, GenerationParams()), ("d", src, GenerationParams())])
    assert batch.keys == ["a"]


def test_removing_a_row_leaves_the_others_intact(model):
    sources = _sources(3, seed=5)
    params = GenerationParams(max_new_tokens=30, min_new_tokens=30)
    expected = [model.decode(model.encode(s), params).ids for s in sources]
    batch = model.new_batch()
    got = {i: [] for i in range(3)}
    for i, src in enumerate(sources):
        for r in batch.add(i, model.encode(src), params):
            got[i].append(r.token)
    for step in range(29):
        if step == 10:
            assert batch.remove(1)
            assert not batch.remove(1)
        for r in batch.step():
            got[r.key].append(r.token)
    assert got[0] == expected[0] and got[2] == expected[2]
    assert got[1] == expected[1][:11]
    assert len(batch) == 0


@pytest.mark.parametrize("cut", [1, 2, 7, 19])
def test_prefix_forcing_resumes_a_cut_sequence_exactly(model, cut):
    for src in _sources(4, seed=cut):
        hidden = model.encode(src)
        full = model.decode(hidden, GenerationParams(max_new_tokens=25)).ids
        if len(full) <= cut:
            continue
        resumed = model.decode(
            hidden, GenerationParams(max_new_tokens=25, prefix=tuple(full[:cut]))
        )
        assert resumed.ids == full


def test_limits_and_forced_first_token(model):
    hidden = model.encode([5, 6, 7, 1])
    out = model.decode(hidden, GenerationParams(max_new_tokens=5, forced_first_token=42))
    assert out.ids[0] == 42 and len(out.ids) <= 5
    forced = model.decode(hidden, GenerationParams(max_new_tokens=20, min_new_tokens=20))
    assert len(forced.ids) == 20 and 1 not in forced.ids[:-1]
    with pytest.raises(InputError, match="max_new_tokens"):
        model.decode(hidden, GenerationParams(max_new_tokens=0))
    with pytest.raises(InputError, match="prefix"):
        model.decode(hidden, GenerationParams(max_new_tokens=3, prefix=(5, 6, 7)))
    with pytest.raises(InputError, match="vocabulary"):
        model.decode(hidden, GenerationParams(max_new_tokens=20, prefix=(10_000,)))
    with pytest.raises(InputError, match="EOS"):
        model.decode(hidden, GenerationParams(max_new_tokens=20, prefix=(5, 1)))


@pytest.mark.parametrize("limit", [2, 7, 30])
def test_min_equal_to_max_gives_max_tokens_without_eos(limit):
    """decoder.proto: EOS is suppressed until min_new_tokens; the bundle's forced last token
    (EOS at the length limit) must not break that promise when min == max."""
    from tandem.defaults import bundle_path

    model = Seq2Seq.load(bundle_path(None))
    assert model.manifest.forced_last_token == model.manifest.tokens.eos
    params = model.params(None, limit, limit)
    out = model.decode(model.encode(model.tokenize("twenty one")), params)
    eos = model.manifest.tokens.eos
    assert out.finish == "length" and len(out.ids) == limit and eos not in out.ids


def test_bad_sources_are_input_errors(model):
    with pytest.raises(InputError, match="empty"):
        model.encode([])
    with pytest.raises(InputError, match="at most 64"):
        model.encode([5] * 65)
    with pytest.raises(InputError, match="vocabulary"):
        model.encode([5, 1000])
    with pytest.raises(InputError, match="shape"):
        model.new_batch().add("x", np.zeros((3, 7), np.float32), GenerationParams())
    with pytest.raises(InputError, match="no tokenizer"):
        model.generate("hello")
    with pytest.raises(InputError, match="unknown target language"):
        model.generate([5, 1], target="xx")


def test_forced_first_token_needs_room_for_one_more(model):
    hidden = model.encode([5, 6, 1])
    with pytest.raises(InputError, match="at least 2 when a first token is forced"):
        model.decode(hidden, GenerationParams(max_new_tokens=1, forced_first_token=42))
    out = model.decode(hidden, GenerationParams(max_new_tokens=2, forced_first_token=42))
    assert len(out.ids) == 2 and out.ids[0] == 42


def test_decode_many_equals_one_by_one(model):
    sources = _sources(7, seed=11)
    items = [(model.encode(s), GenerationParams(max_new_tokens=25)) for s in sources]
    expected = [model.decode(h, p).ids for h, p in items]
    assert model.decode_many(items, batch_size=3) == expected


def test_warm_up_runs_every_part_within_the_bundles_limits_and_changes_no_output(marian_bundle):
    fresh = Seq2Seq.load(marian_bundle)
    source = [5, 6, 7, 8, 1]
    before = fresh.decode(fresh.encode(source), GenerationParams(max_new_tokens=12)).ids
    # sizes beyond the bundle's limits are capped, not errors
    assert fresh.warm_up(src_len=10_000, steps=10_000) > 0
    assert fresh.warm_up(src_len=0, steps=0) > 0
    after = fresh.decode(fresh.encode(source), GenerationParams(max_new_tokens=12)).ids
    assert after == before


def test_a_forced_prompt_is_generated_first_and_a_prefix_keeps_it(model):
    """Whisper's prompt as a forced prompt: streamed and counted like a forced first token, a
    resumed decode continues after it, and its rules are InputErrors."""
    source = [5, 6, 7, 8]
    hidden = model.encode(source)
    prompt = (11, 12, 13)
    params = GenerationParams(max_new_tokens=12, forced_prompt=prompt, forced_first_token=11)
    full = model.decode(hidden, params)
    assert tuple(full.ids[:3]) == prompt
    # The same computation as the prompt given as a prefix, and a resume from any cut after it.
    assert model.decode(hidden, GenerationParams(max_new_tokens=12, prefix=prompt)).ids == full.ids
    for cut in range(3, len(full.ids)):
        resumed = model.decode(hidden, GenerationParams(
            max_new_tokens=12, forced_prompt=prompt, prefix=tuple(full.ids[:cut])))  # fmt: skip
        assert resumed.ids == full.ids
    manifest = model.manifest
    for bad, words in [
        (dict(forced_first_token=12), "is not the forced prompt's first token 11"),
        (dict(max_new_tokens=3), "leaving no room under max_new_tokens"),
        (dict(prefix=(11, 12)), "prefix does not start with the forced prompt"),
        (dict(forced_prompt=(11, 10**9)), "forced_prompt[1] = 1000000000 is outside"),
    ]:
        fields = dict(max_new_tokens=12, forced_prompt=prompt, forced_first_token=11) | bad
        with pytest.raises(InputError, match=re.escape(words)):
            GenerationParams(**fields).resolved(manifest)
