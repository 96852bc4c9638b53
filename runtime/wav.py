"""WAV files → float32 mono samples, with every way a file can be unusable named as InputError.

One small RIFF parser instead of the standard library's ``wave``: ``wave`` rejects IEEE float
(format 3), the encoding most tools write for float audio, and on Python 3.11 also
WAVE_FORMAT_EXTENSIBLE, the header many recorders write even for plain PCM. Reading the
``fmt `` and ``data`` chunks ourselves is a few dozen lines, handles all of them the same way,
and lets us refuse an over-long file from its header before reading its samples.

Supported: PCM 8 (unsigned), 16, 24, 32 bit; IEEE float 32 and 64 bit; either one inside
WAVE_FORMAT_EXTENSIBLE; 1 to ``MAX_CHANNELS`` channels (mixed down to mono by their mean); any
rate from ``MIN_RATE`` to ``MAX_RATE`` Hz. Integer samples scale to [-1, 1) as every audio
library does (x / 2^(bits-1)), so a 16-bit file gives the same floats here as in soundfile.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.errors import InputError

MAX_CHANNELS = 16
MIN_RATE = 1000
MAX_RATE = 384_000
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_MAX_FMT_BYTES = 1024
_FORMAT_NAMES = {2: "MS ADPCM", 6: "A-law", 7: "mu-law", 0x11: "IMA ADPCM", 0x55: "MP3"}


@dataclass(frozen=True)
class Audio:
    """Decoded audio: mono samples in [-1, 1] and their rate."""

    samples: np.ndarray
    """(n,) float32"""
    sampling_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sampling_rate


@dataclass(frozen=True)
class _Format:
    tag: int
    channels: int
    rate: int
    bits: int
    block_align: int


def _parse_fmt(body: bytes, name: str) -> _Format:
    if len(body) < 16:
        raise InputError(f"{name}: WAV 'fmt ' chunk is too short ({len(body)} bytes)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise InputError(f"{name}: WAVE_FORMAT_EXTENSIBLE header is too short")
        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the tag
    if tag not in (_PCM, _FLOAT):
        what = _FORMAT_NAMES.get(tag, f"format tag {tag:#06x}")
        raise InputError(f"{name}: unsupported WAV encoding {what} (use PCM or float)")
    if tag == _PCM and bits not in (8, 16, 24, 32):
        raise InputError(f"{name}: unsupported PCM sample size {bits} bits (use 8, 16, 24 or 32)")
    if tag == _FLOAT and bits not in (32, 64):
        raise InputError(f"{name}: unsupported float sample size {bits} bits (use 32 or 64)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InputError(f"{name}: {channels} channels; supported are 1 to {MAX_CHANNELS}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InputError(f"{name}: sample rate {rate} Hz; supported are {MIN_RATE} to {MAX_RATE}")
    if block_align != channels * bits // 8:
        raise InputError(
            f"{name}: WAV block align {block_align} does not match {channels} channels of "
            f"{bits} bits"
        )
    return _Format(tag, channels, rate, bits, block_align)


def _samples(raw: bytes, fmt: _Format) -> np.ndarray:
    frames = len(raw) // fmt.block_align
    raw = raw[: frames * fmt.block_align]  # a torn last frame is dropped
    if fmt.tag == _FLOAT:
        x = np.frombuffer(raw, dtype="<f4" if fmt.bits == 32 else "<f8").astype(np.float64)
        if not np.isfinite(x).all():
            raise InputError("WAV float samples contain NaN or infinity")
    elif fmt.bits == 8:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif fmt.bits == 16:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif fmt.bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float64) / float(1 << 23)
    else:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)
    x = x.reshape(frames, fmt.channels)
    mono = x[:, 0] if fmt.channels == 1 else x.mean(axis=1)
    return mono.astype(np.float32)


def read_wav(path: str | Path, max_duration_s: float | None = None) -> Audio:
    """Read a WAV file; InputError for anything that is not usable audio.

    ``max_duration_s`` is checked against the header, before the samples are read.
    """
    path = Path(path)
    name = str(path)
    try:
        with path.open("rb") as f:
            return _read(f, name, path.stat().st_size, max_duration_s)
    except FileNotFoundError as exc:
        raise InputError(f"{name}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{name}: is a directory, not a WAV file") from exc
    except PermissionError as exc:
        raise InputError(f"{name}: permission denied") from exc
    except OSError as exc:
        raise InputError(f"{name}: cannot be read: {exc.strerror or exc}") from exc


def parse_wav(data: bytes, max_duration_s: float | None = None, name: str = "audio") -> Audio:
    """``read_wav`` for the bytes of a WAV file (an upload, a message field)."""
    return _read(io.BytesIO(data), name, len(data), max_duration_s)


def _read(f, name: str, size: int, max_duration_s: float | None) -> Audio:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:12] != b"WAVE":
        raise InputError(f"{name}: not a WAV file (no RIFF/WAVE header)")
    if head[:4] != b"RIFF":
        raise InputError(f"{name}: {head[:4].decode()} WAV files are not supported (use RIFF)")
    fmt = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            missing = "data" if fmt else "fmt "
            raise InputError(f"{name}: WAV file has no '{missing}' chunk (truncated?)")
        chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if chunk_id == b"fmt ":
            if chunk_size > _MAX_FMT_BYTES:
                raise InputError(f"{name}: WAV 'fmt ' chunk of {chunk_size} bytes is malformed")
            fmt = _parse_fmt(f.read(chunk_size), name)
            f.seek(chunk_size & 1, 1)
        elif chunk_id == b"data":
            if fmt is None:
                raise InputError(f"{name}: WAV 'data' chunk comes before its 'fmt ' chunk")
            available = max(0, size - f.tell())
            data_size = min(chunk_size, available)  # streamed files leave the size unset
            frames = data_size // fmt.block_align
            if frames == 0:
                raise InputError(f"{name}: audio is empty (zero samples)")
            duration = frames / fmt.rate
            if max_duration_s is not None and duration > max_duration_s:
                raise InputError(
                    f"{name}: audio is {duration:.1f} s long; the limit is {max_duration_s:g} s"
                )
            return Audio(_samples(f.read(frames * fmt.block_align), fmt), fmt.rate)
        else:
            f.seek(chunk_size + (chunk_size & 1), 1)
