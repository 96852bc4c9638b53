"""The speech data recipe: deterministic synthesis, held-out split, the on-disk format.

Needs Debian's ``espeak-ng`` (``make install`` installs it where it can); skipped without it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tools import speech_data
from tools.speech_data import (
    SAMPLING_RATE,
    WINDOW_S,
    EspeakMissing,
    heldout_set,
    heldout_utterances,
    read_dataset,
    training_set,
    write_dataset,
)
from tools.verbalizer_data import LANGUAGES, target_text

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng); it speaks the speech data",
)


@needs_espeak
def test_synthesis_is_deterministic_from_the_seed():
    a = training_set(6, seed=5, exclude=frozenset())
    b = training_set(6, seed=5, exclude=frozenset())
    c = training_set(6, seed=6, exclude=frozenset())
    assert [u for u, _ in a] == [u for u, _ in b]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert [u for u, _ in a] != [u for u, _ in c]


@needs_espeak
def test_utterances_are_16khz_float_within_the_window_with_verbalizer_targets():
    for utt, samples in training_set(8, seed=1, exclude=frozenset()):
        assert samples.dtype == np.float32 and samples.ndim == 1
        assert 0 < len(samples) <= WINDOW_S * SAMPLING_RATE
        assert np.abs(samples).max() <= 1.0
        numbers = [int(n) for n in utt.source.split()]
        assert 1 <= len(numbers) <= speech_data.MAX_NUMBERS
        assert utt.text == target_text(numbers, utt.lang)


@needs_espeak
def test_heldout_is_a_prefix_round_robin_and_unseen_by_training():
    short, longer = heldout_set(4), heldout_set(8)
    assert [u for u, _ in short] == [u for u, _ in longer[:4]]
    assert [u.lang for u, _ in longer] == [*LANGUAGES, *LANGUAGES]
    reserved = {u.source for u in heldout_utterances(50)}
    assert {u.source for u, _ in longer} <= reserved
    train = training_set(8, seed=3, exclude=frozenset(reserved))
    assert not {u.source for u, _ in train} & reserved


@needs_espeak
def test_dataset_round_trips_through_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(speech_data, "SHARD_UTTERANCES", 3)  # several shards
    examples = training_set(7, seed=2, exclude=frozenset())
    write_dataset(tmp_path / "d", examples, {"kind": "test"})
    back = read_dataset(tmp_path / "d")
    assert [u for u, _ in back] == [u for u, _ in examples]
    for (_, x), (_, y) in zip(back, examples, strict=True):
        assert np.abs(x - y).max() <= 1 / 32767  # int16 on disk
    assert len(list((tmp_path / "d").glob("audio-*.npz"))) == 3


def test_missing_espeak_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EspeakMissing, match="apt-get install espeak-ng"):
        speech_data.espeak_binary()
    assert speech_data.main(["--out", "unused", "--train", "1", "--heldout", "1"]) == 2
