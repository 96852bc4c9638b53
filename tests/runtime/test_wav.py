"""WAV reading: every supported encoding gives the same floats; everything else is InputError."""

from __future__ import annotations

import struct
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.errors import InputError
from tandem.runtime.wav import parse_wav, read_wav
from wavfiles import ENCODINGS, wav_bytes, write_wav

STEP = {"pcm8": 1 / 128, "pcm16": 1 / 32768, "pcm24": 2**-23, "pcm32": 2**-31,
        "float32": 1e-7, "float64": 1e-12}  # fmt: skip


def _signal(n: int = 1600) -> np.ndarray:
    return (0.8 * np.sin(np.arange(n) * 0.05)).astype(np.float32)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("extensible", [False, True])
def test_every_encoding_reads_back(tmp_path, encoding, extensible):
    x = _signal()
    path = write_wav(tmp_path / "a.wav", x, 22050, encoding, extensible=extensible,
                     extra_chunk=True)  # fmt: skip
    audio = read_wav(path)
    assert audio.sampling_rate == 22050
    assert audio.samples.dtype == np.float32 and audio.samples.shape == x.shape
    assert np.abs(audio.samples - x).max() <= STEP[encoding]


def test_pcm16_matches_the_standard_library_writer(tmp_path):
    ints = (np.sin(np.arange(1000) * 0.1) * 30000).astype("<i2")
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(ints.tobytes())
    audio = read_wav(tmp_path / "s.wav")
    assert np.array_equal(audio.samples, ints.astype(np.float32) / 32768.0)  # exactly


def test_channels_are_mixed_down_by_their_mean(tmp_path):
    left, right = _signal(), -0.5 * _signal()
    stereo = np.stack([left, right], axis=1)
    audio = read_wav(write_wav(tmp_path / "st.wav", stereo, 16000, "float32"))
    np.testing.assert_allclose(audio.samples, (left + right) / 2, atol=1e-7)


def _fmt_wav(tag: int, channels: int = 1, rate: int = 16000, bits: int = 16,
             data: bytes = b"\x00\x00" * 10, align: int | None = None) -> bytes:  # fmt: skip
    align = channels * bits // 8 if align is None else align
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    body = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", 4 + len(body) + len(data)) + b"WAVE" + body + data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, not audio", "not a WAV file"),
        (b"", "not a WAV file"),
        (b"RIFX" + b"\x00" * 4 + b"WAVE", "RIFX WAV files are not supported"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no 'fmt ' chunk"),
        (_fmt_wav(7, bits=8), "unsupported WAV encoding mu-law"),
        (_fmt_wav(2, bits=4, align=1), "unsupported WAV encoding MS ADPCM"),
        (_fmt_wav(0x55), "unsupported WAV encoding MP3"),
        (_fmt_wav(1, bits=12, align=2), "unsupported PCM sample size 12"),
        (_fmt_wav(3, bits=16), "unsupported float sample size 16"),
        (_fmt_wav(1, data=b""), "audio is empty"),
        (_fmt_wav(1, data=b"\x00"), "audio is empty"),
        (_fmt_wav(1, channels=0, align=0), "0 channels"),
        (_fmt_wav(1, channels=20), "20 channels"),
        (_fmt_wav(1, rate=500), "sample rate 500 Hz"),
        (_fmt_wav(1, align=3), "block align"),
        (_fmt_wav(1)[:36], "no 'data' chunk"),
        (_fmt_wav(1)[:-20], "audio is empty"),  # the header promises samples that are cut off
        (wav_bytes(np.array([0.0, np.nan]), encoding="float32"), "NaN or infinity"),
    ],
)
def test_unusable_audio_is_one_input_error(data, message):
    with pytest.raises(InputError) as info:
        parse_wav(data, name="x.wav")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_too_long_audio_is_refused_from_the_header(tmp_path):
    path = write_wav(tmp_path / "long.wav", np.zeros(16000 * 3), 16000)
    with pytest.raises(InputError, match=r"3.0 s long; the limit is 2 s"):
        read_wav(path, max_duration_s=2)
    assert read_wav(path, max_duration_s=3).duration_s == 3.0


def test_files_that_cannot_be_opened(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(InputError, match="is a directory"):
        read_wav(tmp_path)


def test_a_streamed_file_with_an_unset_size_reads_what_is_there():
    data = bytearray(wav_bytes(_signal(100)))
    data[40:44] = b"\xff\xff\xff\xff"  # data chunk size unknown when it was written
    assert len(parse_wav(bytes(data)).samples) == 100


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200),
    st.sampled_from([b"", b"RIFF\x00\x00\x00\x00WAVE", wav_bytes(_signal(8))[:36]]),
)
def test_any_bytes_give_audio_or_input_error(tail, head):
    """Invariant: whatever the bytes, the reader returns finite audio or raises InputError."""
    try:
        audio = parse_wav(head + tail)
    except InputError:
        return
    assert len(audio.samples) > 0 and np.isfinite(audio.samples).all()
