"""The verbalizer's data recipe: input format, targets, held-out split, tokenizer round trip.

Checks outside this repository parse the same format, so these tests pin it exactly.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from num2words import num2words

from tools.verbalizer_data import (
    EOS_ID,
    HELDOUT_ROUND_SEED,
    HELDOUT_SEED,
    LANGUAGE_TOKEN_IDS,
    LANGUAGES,
    ROUND_SHARE,
    SPECIAL_TOKENS,
    TRAIN_SEED,
    build_tokenizer,
    heldout_round_set,
    heldout_set,
    reserved_sources,
    round_off,
    sample_example,
    sample_numbers,
    sample_training_numbers,
    source_text,
    target_text,
    tokenizer_corpus,
    training_examples,
)

_SOURCE_RE = re.compile(r"^(0|[1-9][0-9]{0,8})( (0|[1-9][0-9]{0,8})){0,3}$")


@pytest.fixture(scope="module")
def tokenizer():
    """Small but real: same builder as training, on a smaller corpus."""
    return build_tokenizer(tokenizer_corpus(1500))


def test_source_format_invariants():
    """1-4 ints in 0..999,999,999, plain digits, single spaces, no leading zeros."""
    rng = random.Random(1)
    counts = Counter()
    for _ in range(5000):
        numbers = sample_numbers(rng)
        source = source_text(numbers)
        assert 1 <= len(numbers) <= 4
        assert all(0 <= n <= 999_999_999 for n in numbers)
        assert _SOURCE_RE.match(source), source
        assert [int(x) for x in source.split(" ")] == numbers
        counts[len(numbers)] += 1
    assert set(counts) == {1, 2, 3, 4}


def test_magnitudes_are_log_uniform():
    """Every digit count 1..9 gets about a ninth of the numbers."""
    rng = random.Random(2)
    digits = Counter(len(str(n)) for _ in range(4000) for n in sample_numbers(rng))
    total = sum(digits.values())
    assert set(digits) == set(range(1, 10))
    for d in range(1, 10):
        assert 0.08 < digits[d] / total < 0.14, (d, digits[d] / total)


def test_target_is_num2words_join():
    assert target_text([21, 1000], "fr") == "vingt et un, mille"
    rng = random.Random(3)
    for _ in range(200):
        numbers = sample_numbers(rng)
        for lang in LANGUAGES:
            expected = ", ".join(num2words(n, lang=lang) for n in numbers)
            assert target_text(numbers, lang) == expected


def test_sample_example_is_consistent():
    rng = random.Random(4)
    for _ in range(200):
        source, lang, target = sample_example(rng)
        assert lang in LANGUAGES
        assert target == target_text([int(x) for x in source.split(" ")], lang)


def test_heldout_is_deterministic_balanced_and_prefix_stable():
    a = heldout_set(400)
    assert a == heldout_set(400, seed=HELDOUT_SEED)
    assert heldout_set(800)[:400] == a
    assert len({s for s, _, _ in a}) == 400
    assert Counter(lang for _, lang, _ in a) == {lang: 100 for lang in LANGUAGES}
    assert heldout_set(50, seed=HELDOUT_SEED + 1) != a[:50]


def test_training_stream_skips_heldout_sources():
    """The exclusion set really filters: force collisions with a tiny-number held-out set."""
    held = {s for s, _, _ in heldout_set(400)}
    assert HELDOUT_SEED != TRAIN_SEED
    stream = training_examples(random.Random(TRAIN_SEED), frozenset(held))
    sample = [next(stream) for _ in range(3000)]
    assert not held & {s for s, _, _ in sample}
    everything_small = frozenset(str(n) for n in range(10))
    stream = training_examples(random.Random(5), everything_small)
    assert all(next(stream)[0] not in everything_small for _ in range(2000))


def test_special_token_ids_are_fixed(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert LANGUAGE_TOKEN_IDS == {"en": 3, "fr": 4, "de": 5, "es": 6}
    assert tokenizer.token_to_id("__de__") == 5


def test_every_digit_is_its_own_token(tokenizer):
    encoding = tokenizer.encode("987654321 0 1000")
    digit_tokens = [t for t in encoding.tokens if any(c.isdigit() for c in t)]
    assert digit_tokens == list("987654321" + "0" + "1000")
    assert encoding.ids[-1] == EOS_ID
    assert encoding.ids.count(EOS_ID) == 1


def test_group_marks_state_place_value(tokenizer):
    assert tokenizer.encode("1234567").tokens == [
        "▁",
        "1",
        "_",
        "2",
        "3",
        "4",
        "_",
        "5",
        "6",
        "7",
        "</s>",
    ]


def test_target_round_trip_is_exact(tokenizer):
    """decode(encode(t)) == t for thousands of targets of every language, none via <unk>."""
    rng = random.Random(6)
    targets = []
    for _ in range(1500):
        numbers = sample_numbers(rng)
        targets.extend(target_text(numbers, lang) for lang in LANGUAGES)
    targets.extend(target_text([n], lang) for n in range(0, 1000, 7) for lang in LANGUAGES)
    encodings = tokenizer.encode_batch(targets, add_special_tokens=False)
    decoded = tokenizer.decode_batch([e.ids for e in encodings])
    for target, encoding, text in zip(targets, encodings, decoded, strict=True):
        assert 2 not in encoding.ids, target
        assert text == target


def test_decode_skips_language_and_eos_tokens(tokenizer):
    target = target_text([21, 1000], "de")
    ids = [0, LANGUAGE_TOKEN_IDS["de"], *tokenizer.encode(target, add_special_tokens=False).ids, 1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == target


def _lower_groups(n: int) -> list[int]:
    """Three-digit groups below the leading one, least significant first."""
    return [(n // 10 ** (3 * g)) % 1000 for g in range((len(str(n)) - 1) // 3)]


def test_round_off_clears_whole_lower_groups_and_keeps_the_rest():
    rng = random.Random(8)
    for _ in range(3000):
        n = rng.randint(0, 999_999_999)
        r = round_off(n, rng)
        if n < 1000:
            assert r == n
            continue
        assert len(str(r)) == len(str(n))  # the leading group is kept
        assert str(r)[: len(str(n)) % 3 or 3] == str(n)[: len(str(n)) % 3 or 3]
        kept = [a in (0, b) for a, b in zip(_lower_groups(r), _lower_groups(n), strict=True)]
        assert all(kept), (n, r)
        assert 0 in _lower_groups(r), (n, r)  # at least one whole group cleared
    assert round_off(1_234_567, random.Random(0)) in {1_000_567, 1_234_000, 1_000_000}


def test_training_draws_round_numbers_at_about_their_share():
    rng = random.Random(9)
    big = [n for _ in range(6000) for n in sample_training_numbers(rng) if n >= 1000]
    share = sum(0 in _lower_groups(n) for n in big) / len(big)
    assert ROUND_SHARE - 0.04 < share < ROUND_SHARE + 0.05, share  # + the few natural ones


def test_round_heldout_is_round_balanced_and_reserved():
    held = heldout_round_set(200)
    assert held == heldout_round_set(200, seed=HELDOUT_ROUND_SEED)
    assert Counter(lang for _, lang, _ in held) == {lang: 50 for lang in LANGUAGES}
    numbers = [int(x) for source, _, _ in held for x in source.split(" ")]
    assert all(0 in _lower_groups(n) for n in numbers if n >= 1000)
    assert any(n >= 1_000_000 for n in numbers)
    reserved = reserved_sources()
    assert {s for s, _, _ in held} <= reserved
    assert {s for s, _, _ in heldout_set(200)} <= reserved
