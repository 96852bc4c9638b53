"""The shipped verbalizer meets its quality bar through the shipped runtime (200-input slice)."""

from __future__ import annotations

import pytest

from tandem.defaults import bundle_path
from tandem.runtime.seq2seq import Seq2Seq
from tools.eval_verbalizer import evaluate, summary
from tools.verbalizer_data import heldout_round_set, heldout_set

SLICE = 200


@pytest.fixture(scope="module")
def scores():
    examples = heldout_set(SLICE)
    return {
        name: summary(evaluate(Seq2Seq.load(bundle_path(name)), examples))
        for name in ("verbalizer", "verbalizer-int8")
    }


def test_fp32_meets_the_bar(scores):
    fp32 = scores["verbalizer"]
    assert fp32["n"] == SLICE
    assert fp32["overall"] >= 0.995, fp32
    for lang, accuracy in fp32["per_language"].items():
        assert accuracy >= 0.99, (lang, fp32)


def test_int8_is_within_one_point(scores):
    assert scores["verbalizer-int8"]["overall"] >= scores["verbalizer"]["overall"] - 0.01


def test_round_numbers_meet_the_bar_too():
    """Numbers with whole zero groups (``1000000``, ``45000789``), which log-uniform sampling
    almost never draws: the model that shipped before this set existed scored 72.75 % on it."""
    fp32 = summary(evaluate(Seq2Seq.load(bundle_path("verbalizer")), heldout_round_set(SLICE)))
    assert fp32["n"] == SLICE
    assert fp32["overall"] >= 0.98, fp32
