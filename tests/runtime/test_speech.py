"""Whisper's decoding rules, restated from transformers, on hand-made cases (no torch)."""

from __future__ import annotations

import pytest

from tandem.errors import InputError
from tandem.runtime import speech
from tandem.runtime.manifest import AudioFeatures, Dims, Manifest, SpecialTokens, SpeechPrompt

TS = 50364  # <|0.00|>


def _manifest(multilingual: bool = True, **prompt) -> Manifest:
    sot = 50258 if multilingual else 50257
    fields = dict(
        start_of_transcript=sot,
        multilingual=multilingual,
        task_tokens={"transcribe": 50359, "translate": 50358} if multilingual else {},
        no_timestamps=50363 if multilingual else 50362,
        forced_decoder_ids=[[1, None], [2, 50359]] if multilingual else [[1, 50362]],
        max_length=448,
    )
    fields.update(prompt)
    return Manifest(
        name="w",
        architecture="whisper",
        dims=Dims(384, 6, 64, 4, 4, 51865, 1500, 448),
        tokens=SpecialTokens(pad=50257, eos=50257, decoder_start=sot),
        parts={},
        opset=17,
        languages={"en": 50259, "fr": 50265} if multilingual else {},
        audio=AudioFeatures(80, 16000, 400, 160, 480000, 3000),
        speech=SpeechPrompt(**fields),
    )


def test_prompts_are_built_as_transformers_builds_them():
    m = _manifest()
    assert speech.build_prompt(m, 50259, "transcribe") == [50258, 50259, 50359, 50363]
    assert speech.build_prompt(m, 50265, None) == [50258, 50265, 50359, 50363]  # forced task
    assert speech.build_prompt(m, None, None) == [50258, 50359, 50363]  # forced [1, None] dropped
    assert speech.begin_index(m) == 4
    en = _manifest(multilingual=False)
    assert speech.build_prompt(en, None, None) == [50257, 50362]
    assert speech.build_prompt(en, speech.language_token(en, "en"), "transcribe") == [50257, 50362]
    assert speech.begin_index(en) == 2
    assert speech.language_token(m, "<|FR|>") == 50265
    with pytest.raises(InputError, match="English-only"):
        speech.language_token(en, "fr")


def test_length_bounds_follow_transformers():
    m = _manifest()
    assert speech.max_new_tokens(m, 4, None) == 444  # min(448 + 4, 448) - 4
    assert speech.grown_max_length(m, 4, 24) == 28  # and 32 on the next run of the input
    assert speech.max_new_tokens(m, 4, None, max_length=28) == 28
    assert speech.max_new_tokens(m, 4, 10) == 10
    with pytest.raises(InputError, match=r"max_new_tokens must be in \[1, 444\]"):
        speech.max_new_tokens(m, 4, 445)
    assert speech.max_new_tokens(_manifest(max_new_tokens=500), 4, None) == 444


def test_output_drops_final_eos_and_follows_the_padding_rule():
    assert speech.as_transformers([5, 6, 50257], eos=50257, pad=50257) == [5, 6]
    assert speech.as_transformers([5, 6], eos=50257, pad=50257) == [5, 6]
    # pad != eos and the run ends on pad: as many tokens as there are pads are cut.
    assert speech.as_transformers([9, 5, 9, 7, 9], eos=1, pad=9) == [9, 5]


@pytest.mark.parametrize(
    ("tokens", "kept", "frames"),
    [
        ([5, 6, 7], [5, 6, 7], 3000),  # no timestamps: the whole run, the whole window
        ([5, TS + 3, 6], [5, TS + 3, 6], 3000),  # single timestamps end nothing
        ([5, TS + 3, TS + 4, 6, 7], [5, TS + 3, TS + 4], 6),  # resume at <|0.06|>
        ([5, TS + 3, TS + 4, 6, TS + 9], [5, TS + 3, TS + 4, 6, TS + 9], 3000),  # single ending
        ([TS, TS, 6], [TS, TS], 0),  # resume at 0: the caller stops (transformers loops forever)
    ],
)
def test_timestamp_pairs_split_a_run_as_transformers_does(tokens, kept, frames):
    assert speech.split_segments(tokens, TS, 3000, 2) == (kept, frames)
    assert speech.split_segments(tokens, None, 3000, 2) == (tokens, 3000)
