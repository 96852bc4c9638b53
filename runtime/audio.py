"""The audio front end without torch: samples → 16 kHz mono → Whisper's log-mel windows.

``log_mel`` restates transformers' ``WhisperFeatureExtractor`` in numpy (its values agree within
1e-4; the test measures it): pad or cut to the window, centred frames with reflect padding,
periodic Hann window, power spectrum, Slaney-normalised mel filters on the Slaney mel scale,
log10 with a 1e-10 floor, clamp to max − 8, (x + 4) / 4, last frame dropped.

``resample`` converts any rate to the model's: band-limited interpolation with a
Kaiser-windowed sinc (16 zero crossings, β = 8.6, cut-off at the lower rate's Nyquist, so
downsampling does not alias). It is a good resampler, not a copy of any particular library's:
for ids identical to a reference run, give both the same 16 kHz audio.
"""

from __future__ import annotations

import math

import numpy as np

from tandem.errors import InputError
from tandem.runtime.manifest import AudioFeatures

_MEL_MAX_HZ = 8000.0  # transformers uses 8 kHz whatever the rate (Whisper's Nyquist)
_RESAMPLE_ZEROS = 16
_RESAMPLE_BETA = 8.6
_RESAMPLE_CHUNK = 4096


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    return np.where(
        log_region, 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4)), mel
    )


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = 200.0 * mel / 3.0
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), hz)


def mel_filters(audio: AudioFeatures) -> np.ndarray:
    """Triangular filters (n_fft // 2 + 1, n_mels) float64, Slaney-normalised (area-equal)."""
    bins = audio.n_fft // 2 + 1
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(_MEL_MAX_HZ), audio.n_mels + 2)
    edges = _mel_to_hz(mels)  # (n_mels + 2,)
    fft_hz = np.linspace(0, audio.sampling_rate // 2, bins)  # (bins,)
    diff = np.diff(edges)
    slopes = edges[None, :] - fft_hz[:, None]  # (bins, n_mels + 2)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def log_mel(samples: np.ndarray, audio: AudioFeatures) -> np.ndarray:
    """One window's features (n_mels, n_frames) float32 from mono samples at the model's rate."""
    x = np.zeros(audio.n_samples, dtype=np.float64)
    n = min(len(samples), audio.n_samples)
    x[:n] = np.asarray(samples[:n], dtype=np.float32)  # the reference works on float32 audio
    half = audio.n_fft // 2
    padded = np.pad(x, half, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, audio.n_fft)[:: audio.hop_length]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(audio.n_fft) / audio.n_fft)  # periodic
    spectrum = np.fft.rfft(frames * window, axis=-1)  # (frames + 1, bins)
    power = spectrum.real**2 + spectrum.imag**2
    mel = power @ mel_filters(audio)  # (frames + 1, n_mels)
    log_spec = np.log10(np.maximum(mel, 1e-10)).T[:, :-1]  # (n_mels, frames), last frame dropped
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    features = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return features[:, : audio.n_frames]


def windows(samples: np.ndarray, audio: AudioFeatures) -> list[np.ndarray]:
    """Consecutive windows of ``n_samples`` (the last one shorter); at least one.

    Long audio is cut at fixed boundaries, with no overlap and no search for silence: a word
    on a boundary may be split between two windows' transcripts.
    """
    if len(samples) == 0:
        raise InputError("audio is empty")
    step = audio.n_samples
    return [samples[i : i + step] for i in range(0, len(samples), step)]


def _kaiser(x: np.ndarray, beta: float) -> np.ndarray:
    inside = np.abs(x) <= 1.0
    arg = np.sqrt(np.clip(1.0 - x * x, 0.0, None))
    return np.where(inside, np.i0(beta * arg) / np.i0(beta), 0.0)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Mono ``samples`` at ``rate_in`` → float32 at ``rate_out`` (see the module docstring)."""
    x = np.asarray(samples, dtype=np.float64)
    if rate_in == rate_out:
        return x.astype(np.float32)
    if rate_in <= 0 or rate_out <= 0:
        raise InputError(f"sample rates must be positive, got {rate_in} → {rate_out}")
    n_out = -(-len(x) * rate_out // rate_in)  # ceil, as a polyphase resampler gives
    cutoff = min(1.0, rate_out / rate_in)  # relative to the input Nyquist
    half = _RESAMPLE_ZEROS / cutoff  # filter half-width in input samples
    width = math.ceil(half)
    offsets = np.arange(-width, width + 1)
    out = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, _RESAMPLE_CHUNK):
        t = np.arange(start, min(start + _RESAMPLE_CHUNK, n_out)) * (rate_in / rate_out)
        k = np.floor(t).astype(np.int64)[:, None] + offsets[None, :]  # (chunk, taps)
        d = t[:, None] - k
        h = cutoff * np.sinc(cutoff * d) * _kaiser(d / half, _RESAMPLE_BETA)
        valid = (k >= 0) & (k < len(x))
        taps = np.where(valid, x[np.clip(k, 0, max(len(x) - 1, 0))], 0.0)
        out[start : start + len(t)] = np.sum(h * taps, axis=1)
    return out.astype(np.float32)
