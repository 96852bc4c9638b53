"""Whisper bundles: exported ids equal transformers' greedy Whisper ``generate`` ids.

Reference: ``generate(input_features, language="en", task="transcribe")``, greedy, no
timestamps, on features from transformers' own ``WhisperFeatureExtractor``; ours: the bundle
from raw samples through our numpy front end (``Seq2Seq.transcribe``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import hf_models
from tandem.errors import BundleError, InputError
from tandem.runtime.bundle import read_manifest
from tandem.runtime.manifest import parse_manifest
from tandem.runtime.seq2seq import Seq2Seq

pytestmark = pytest.mark.export

INPUTS = 20


def _reference(checkpoint):
    import transformers

    model = transformers.WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    return model


def _extractor(manifest):
    import transformers

    audio = manifest.audio
    return transformers.WhisperFeatureExtractor(
        feature_size=audio.n_mels,
        sampling_rate=audio.sampling_rate,
        hop_length=audio.hop_length,
        n_fft=audio.n_fft,
        chunk_length=audio.n_samples // audio.sampling_rate,
    )


def _features(extractor, x):
    return extractor(x, sampling_rate=16000, return_tensors="np").input_features[0]


def test_ids_match_transformers_on_20_random_inputs(whisper_checkpoint, whisper_bundle):
    reference = _reference(whisper_checkpoint("multi"))
    model = Seq2Seq.load(whisper_bundle("multi"))
    extractor = _extractor(model.manifest)
    signals = hf_models.whisper_signals(np.random.default_rng(11), INPUTS)
    matched, distinct = 0, set()
    for x in signals:
        want = hf_models.whisper_generate(reference, _features(extractor, x), "en")
        got = model.transcribe(x, language="en")
        assert got.ids == want
        assert got.segments[0].ids[:3] == [
            50259,
            50359,
            50363,
        ]  # <|en|> <|transcribe|> <|notimestamps|>
        matched += 1
        distinct.add(tuple(want))
    assert matched == INPUTS
    # Greedy paths must vary with the audio, or equality above would prove little.
    assert len(distinct) >= INPUTS // 2, f"only {len(distinct)} distinct outputs"


def test_hidden_states_match_transformers_encoder(whisper_checkpoint, whisper_bundle):
    import torch

    reference = _reference(whisper_checkpoint("multi"))
    model = Seq2Seq.load(whisper_bundle("multi"))
    extractor = _extractor(model.manifest)
    for x in hf_models.whisper_signals(np.random.default_rng(3), 3):
        feats = _features(extractor, x)
        with torch.no_grad():
            want = reference.get_encoder()(torch.from_numpy(feats[None])).last_hidden_state[0]
        np.testing.assert_allclose(model.encode_features(feats), want.numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["en", "tied", "eos", "timestamps"])
def test_other_checkpoints_match_transformers(kind, whisper_checkpoint, whisper_bundle):
    """English-only (no language or task tokens), tied embeddings, sequences that end on EOS,
    timestamp tokens (transformers then cuts and resumes within the window)."""
    reference = _reference(whisper_checkpoint(kind))
    model = Seq2Seq.load(whisper_bundle(kind))
    extractor = _extractor(model.manifest)
    language = None if kind == "en" else "en"
    finishes, runs = set(), 0
    for x in hf_models.whisper_signals(np.random.default_rng(5), 6):
        want = hf_models.whisper_generate(reference, _features(extractor, x), language)
        got = model.transcribe(x, language=language)
        assert got.ids == want
        finishes.add(got.finish)
        runs = max(runs, len(got.segments))
    if kind == "timestamps":
        assert runs > 1, "no input made transformers resume within the window"
    if kind == "en":
        assert model.speech_params().forced_prompt == (50362,)  # <|notimestamps|> only
        assert model.transcribe(np.zeros(800, np.float32), "en").language is None
    if kind == "eos":
        assert "eos" in finishes


def test_language_detection_and_max_new_tokens_match(whisper_checkpoint, whisper_bundle):
    import torch

    reference = _reference(whisper_checkpoint("multi"))
    model = Seq2Seq.load(whisper_bundle("multi"))
    extractor = _extractor(model.manifest)
    for x in hf_models.whisper_signals(np.random.default_rng(8), 3):
        feats = _features(extractor, x)
        with torch.no_grad():
            want = reference.generate(torch.from_numpy(feats[None]), task="transcribe")[0].tolist()
            lang_id = reference.detect_language(torch.from_numpy(feats[None]))[0].item()
        got = model.transcribe(x)
        assert model.manifest.languages[got.language] == lang_id
        assert got.ids == want
        short = hf_models.whisper_generate(reference, feats, "fr", max_new_tokens=5)
        assert model.transcribe(x, language="fr", max_new_tokens=5).ids == short


def test_long_audio_is_transcribed_window_by_window(whisper_checkpoint, whisper_bundle):
    reference = _reference(whisper_checkpoint("multi"))
    model = Seq2Seq.load(whisper_bundle("multi"))
    extractor = _extractor(model.manifest)
    n = model.manifest.audio.n_samples
    parts = hf_models.whisper_signals(np.random.default_rng(9), 3)
    x = np.concatenate([np.resize(parts[0], n), np.resize(parts[1], n), parts[2][: n // 3]])
    got = model.transcribe(x, language="en")
    assert len(got.segments) >= 3
    want = []
    for i in range(3):
        want += hf_models.whisper_generate(
            reference, _features(extractor, x[i * n : (i + 1) * n]), "en"
        )
    assert got.ids == want


def test_int8_bundle_is_smaller_and_transcribes(whisper_bundle):
    fp32, int8 = whisper_bundle("multi"), whisper_bundle("multi", int8=True)
    size = lambda p: (p / "decoder.onnx").stat().st_size  # noqa: E731
    assert size(int8) < size(fp32)
    model = Seq2Seq.load(int8)
    assert model.manifest.quantization == "int8"
    out = model.transcribe(np.zeros(8000, np.float32), "en", max_new_tokens=6)
    assert 1 <= len(out.ids) <= 6


def test_manifest_records_the_front_end_and_prompt(whisper_bundle):
    manifest = read_manifest(whisper_bundle("multi"))
    assert manifest.architecture == "whisper"
    audio = manifest.audio
    assert (audio.n_mels, audio.sampling_rate, audio.n_fft, audio.hop_length) == (
        80,
        16000,
        400,
        160,
    )
    assert (audio.n_samples, audio.n_frames, audio.chunk_length_s) == (16000, 100, 1.0)
    speech = manifest.speech
    assert speech.start_of_transcript == manifest.tokens.decoder_start == 50258
    assert speech.task_tokens == {"translate": 50358, "transcribe": 50359}
    assert speech.no_timestamps == 50363 and speech.multilingual
    assert speech.begin_suppress_tokens == [220, 50257]
    assert manifest.languages == hf_models.WHISPER_LANGS
    assert 50362 in manifest.suppress_tokens


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("audio"), "needs 'audio'"),
        (lambda d: d.pop("speech"), "needs 'speech'"),
        (lambda d: d["audio"].update(n_frames=99), "audio.n_frames"),
        (lambda d: d["audio"].update(n_mels=0), "audio.n_mels must be >= 1"),
        (lambda d: d["audio"].update(bogus=1), "unknown key(s) in 'audio'"),
        (lambda d: d["speech"].update(no_timestamps=10**6), "outside the vocabulary"),
        (lambda d: d["speech"].update(task_tokens={"dance": 5}), "task_tokens"),
        (lambda d: d["speech"].update(start_of_transcript=5), "must equal tokens.decoder_start"),
        (lambda d: d["speech"].update(multilingual="yes"), "multilingual must be true or false"),
        (lambda d: d["speech"].update(begin_suppress_tokens=[-1]), "must be >= 0"),
        (lambda d: d["speech"].update(forced_decoder_ids=[[0, 1]]), "must be >= 1"),
        (lambda d: d.update(architecture="marian"), "only for speech architectures"),
    ],
)
def test_bad_speech_manifest_is_refused(whisper_bundle, edit, message):
    import yaml

    data = yaml.safe_load((whisper_bundle("multi") / "bundle.yaml").read_text())
    data = copy.deepcopy(data)
    edit(data)
    with pytest.raises(BundleError) as info:
        parse_manifest(data)
    assert message in str(info.value)


def test_front_end_that_does_not_fit_the_encoder_is_refused(whisper_bundle, tmp_path):
    import shutil

    import yaml

    from tandem.runtime.bundle import load_bundle

    bundle = shutil.copytree(whisper_bundle("multi"), tmp_path / "b")
    data = yaml.safe_load((bundle / "bundle.yaml").read_text())
    data.pop("fingerprint")
    data["audio"].update(n_samples=32000, n_frames=200)  # a 2 s window for a 1 s encoder
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(BundleError, match="encoder takes input_features"):
        load_bundle(bundle)


def test_bad_requests_are_input_errors(whisper_bundle, marian_bundle):
    model = Seq2Seq.load(whisper_bundle("multi"))
    english = Seq2Seq.load(whisper_bundle("en"))
    text = Seq2Seq.load(marian_bundle)
    cases = [
        (lambda: model.transcribe(np.zeros(0, np.float32), "en"), "audio is empty"),
        (lambda: model.transcribe(np.zeros(800, np.float32), "xx"), "unknown language 'xx'"),
        (lambda: model.transcribe(np.zeros(800, np.float32), "en", max_new_tokens=61), "max_new_tokens"),
        (lambda: model.transcribe(np.zeros((2, 800), np.float32), "en"), "mono"),
        (lambda: english.transcribe(np.zeros(800, np.float32), "fr"), "English-only"),
        (lambda: model.encode([5, 6, 1]), "speech model"),
        (lambda: text.transcribe(np.zeros(800, np.float32)), "text model"),
        (lambda: model.encode_features(np.zeros((80, 7), np.float32)), "features must have shape"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(InputError) as info:
            call()
        assert message in str(info.value)


def test_warm_up_runs_on_a_speech_bundle(whisper_bundle):
    assert Seq2Seq.load(whisper_bundle("multi")).warm_up(steps=4) > 0


@pytest.mark.slow
def test_real_tiny_shape_matches_transformers(tmp_path):
    """whisper-tiny's shapes: d_model 384, 4 + 4 layers, 6 heads, 1500 positions (30 s)."""
    from tandem.runtime.export import export_hf

    hf = hf_models.build_whisper(
        tmp_path / "hf", d_model=384, layers=4, heads=6, max_source_positions=1500,
        max_target_positions=448, max_length=448, perturb=False,
    )  # fmt: skip
    export_hf(hf, tmp_path / "bundle")
    model = Seq2Seq.load(tmp_path / "bundle")
    assert model.manifest.audio.n_frames == 3000
    reference = _reference(hf)
    extractor = _extractor(model.manifest)
    for x in hf_models.whisper_signals(np.random.default_rng(1), 3):
        want = hf_models.whisper_generate(
            reference, _features(extractor, x), "en", max_new_tokens=16
        )
        assert model.transcribe(x, "en", max_new_tokens=16).ids == want
