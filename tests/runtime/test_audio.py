"""The numpy front end: log-mel equals transformers' WhisperFeatureExtractor; resampling."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.errors import InputError
from tandem.runtime.audio import log_mel, resample, windows
from tandem.runtime.manifest import AudioFeatures

TOLERANCE = 1e-4


def _front(n_mels: int = 80, chunk_s: int = 30) -> AudioFeatures:
    n = 16000 * chunk_s
    return AudioFeatures(n_mels=n_mels, sampling_rate=16000, n_fft=400, hop_length=160,
                         n_samples=n, n_frames=n // 160)  # fmt: skip


@pytest.mark.export
@pytest.mark.parametrize(("n_mels", "chunk_s"), [(80, 30), (128, 30), (80, 1)])
def test_log_mel_matches_whisper_feature_extractor(n_mels, chunk_s):
    import transformers

    import hf_models

    front = _front(n_mels, chunk_s)
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels, chunk_length=chunk_s)
    rng = np.random.default_rng(0)
    signals = hf_models.whisper_signals(rng, 4) + [
        np.zeros(1600, np.float32),  # silence: everything at the floor
        (rng.standard_normal(front.n_samples + 999) * 0.3).astype(np.float32),  # cut
        np.full(401, 0.5, np.float32),
    ]
    worst = 0.0
    for x in signals:
        want = extractor(x, sampling_rate=16000, return_tensors="np").input_features[0]
        got = log_mel(x, front)
        assert got.shape == want.shape == (n_mels, front.n_frames)
        assert got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst < TOLERANCE, worst


def test_windows_cut_long_audio_at_fixed_boundaries():
    front = _front(chunk_s=1)
    x = np.arange(40000, dtype=np.float32)
    parts = windows(x, front)
    assert [len(p) for p in parts] == [16000, 16000, 8000]
    assert np.array_equal(np.concatenate(parts), x)
    assert len(windows(x[:5], front)) == 1
    with pytest.raises(InputError, match="audio is empty"):
        windows(x[:0], front)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_keeps_a_tone(rate):
    t = np.arange(rate) / rate  # 1 s
    x = np.sin(2 * np.pi * 440.0 * t)
    y = resample(x, rate, 16000)
    assert len(y) == 16000 and y.dtype == np.float32
    want = np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000)
    inner = slice(200, -200)  # the filter sees zeros past the ends
    assert np.abs(y[inner] - want[inner]).max() < 2e-3


def test_resample_removes_what_the_lower_rate_cannot_hold():
    rate = 48000
    t = np.arange(rate) / rate
    y = resample(0.5 * np.sin(2 * np.pi * 12000.0 * t), rate, 16000)  # above 8 kHz Nyquist
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 0.01  # no alias at 4 kHz


def test_resample_identity_and_length():
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    assert np.array_equal(resample(x, 16000, 16000), x)
    assert len(resample(x, 44100, 16000)) == -(-1001 * 16000 // 44100)
    assert len(resample(x[:1], 8000, 16000)) == 2
