"""WAV files of every encoding the reader supports, written byte by byte for the tests."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

ENCODINGS = ("pcm8", "pcm16", "pcm24", "pcm32", "float32", "float64")


def wav_bytes(
    samples: np.ndarray,
    rate: int = 16000,
    encoding: str = "pcm16",
    extensible: bool = False,
    extra_chunk: bool = False,
) -> bytes:
    """RIFF/WAVE bytes of ``samples`` ((n,) mono or (n, channels)) in [-1, 1]."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    channels = x.shape[1]
    if encoding == "pcm8":
        data, bits, tag = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8).tobytes(), 8, 1
    elif encoding == "pcm16":
        data, bits, tag = np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes(), 16, 1
    elif encoding == "pcm24":
        v = np.clip(np.round(x * (1 << 23)), -(1 << 23), (1 << 23) - 1).astype("<i4")
        data = v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        bits, tag = 24, 1
    elif encoding == "pcm32":
        v = np.clip(np.round(x * (1 << 31)), -(1 << 31), (1 << 31) - 1).astype("<i4")
        data, bits, tag = v.tobytes(), 32, 1
    elif encoding == "float32":
        data, bits, tag = x.astype("<f4").tobytes(), 32, 3
    elif encoding == "float64":
        data, bits, tag = x.astype("<f8").tobytes(), 64, 3
    else:
        raise ValueError(encoding)
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * align,
                      align, bits)  # fmt: skip
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if extra_chunk:
        chunks += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd size: padded
    chunks += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, encoding: str = "pcm16",
              **kwargs) -> Path:  # fmt: skip
    Path(path).write_bytes(wav_bytes(samples, rate, encoding, **kwargs))
    return Path(path)
