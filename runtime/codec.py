"""Hidden-state codec: encoder output (rows, hidden) float32 <-> compact bytes for the wire.

The edge encodes, the cloud decodes, and both run this one module, so the two sides cannot
disagree about a byte. Decoding is the cloud's first contact with untrusted input: ``decode``
checks every field against the declared shape and the caller's limits *before* it allocates or
decompresses anything, decompresses at most one byte more than the shape allows (a zip bomb
costs nothing), and turns every problem into a ``CodecError`` that names the field. Any other
exception escaping ``decode`` is a bug.

Pure numpy and in-memory compression: no files, sockets or protobuf. ``tandem.wire`` maps
``EncodedTensor`` to and from the ``tandem.v1.Tensor`` message.

Codecs (the byte layout is specified in ``proto/tandem/v1/decoder.proto``):

* ``fp32``: lossless, 4 bytes per element.
* ``fp16``: round to nearest float16, 2 bytes per element; values beyond ±65504 are refused.
* ``int8``: symmetric per-row quantization, 1 byte per element plus one float32 scale per row.
  ``scale = max|row| / 127`` (0 for a zero row), ``q = rint(row / scale)`` clipped to
  [-127, 127]; decoding gives ``q * scale``, within ``scale / 2`` of the input per element.

Each is optionally compressed with zstd or gzip. Spec strings such as ``"int8+zstd"`` name a
(codec, compression) pair in configs and on the command line.
"""

from __future__ import annotations

import enum
import gzip
import logging
import operator
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import zstandard

from tandem.errors import CodecError, ConfigError

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=enum.Enum)


class Codec(enum.Enum):
    """How float32 hidden states become bytes; the value is the spec-string name."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Compression(enum.Enum):
    """Lossless compression of the encoded bytes (never of the int8 scales)."""

    NONE = "none"
    ZSTD = "zstd"
    GZIP = "gzip"


class DType(enum.Enum):
    """Element type of the decompressed data; redundant with the codec so each checks the other."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"


CODEC_DTYPE: dict[Codec, DType] = {
    Codec.FP32: DType.FLOAT32,
    Codec.FP16: DType.FLOAT16,
    Codec.INT8: DType.INT8,
}
"""The one dtype each codec produces."""

_WIRE_DTYPE: dict[DType, np.dtype] = {
    DType.FLOAT32: np.dtype("<f4"),
    DType.FLOAT16: np.dtype("<f2"),
    DType.INT8: np.dtype("i1"),
}
"""Little-endian numpy dtypes of the wire bytes, whatever the host's byte order."""

_SCALE_DTYPE = np.dtype("<f4")
SCALE_BYTES_PER_ROW = 4
"""int8 only: one little-endian float32 scale per row."""

INT8_LIMIT = 127
"""Quantized values lie in [-127, 127]: symmetric, so -128 never appears and is refused."""

FP16_MAX = float(np.finfo(np.float16).max)  # 65504.0

DEFAULT_ZSTD_LEVEL = 3
"""zstd's own default: most of the ratio of higher levels at a fraction of the edge CPU."""

DEFAULT_GZIP_LEVEL = 6
"""zlib's own default level."""

DEFAULT_MAX_ROWS = 4096
"""Default row limit of ``decode``; servers pass the model's ``max_source_length`` instead."""

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Default limit on the decompressed payload of ``decode`` (64 MiB)."""

_ZSTD_MIN_WINDOW_BYTES = 1 << 23
"""zstd window the decoder always allows (8 MiB, what standard levels up to 19 use), so frames
from any ordinary compressor decode, while a crafted header cannot demand a huge window."""

CODEC_SPECS: tuple[str, ...] = tuple(
    codec.value if compression is Compression.NONE else f"{codec.value}+{compression.value}"
    for codec in Codec
    for compression in Compression
)
"""Every valid spec string in canonical form, e.g. for CLI ``choices``."""


@dataclass(frozen=True)
class EncodedTensor:
    """Hidden states as they cross the wire; mirrors the ``tandem.v1.Tensor`` message.

    Built by ``encode`` (trusted) or from a received message (untrusted): ``decode`` checks
    every field, so nothing here is validated on construction.
    """

    codec: Codec
    compression: Compression
    dtype: DType
    shape: tuple[int, ...]
    """(rows, hidden)."""
    data: bytes
    """Elements, row-major, little-endian, of ``dtype``, after ``compression``."""
    scales: bytes = b""
    """int8 only: little-endian float32 per row; empty otherwise."""

    @property
    def wire_bytes(self) -> int:
        """Bytes this tensor adds to a message (data and scales; framing aside)."""
        return len(self.data) + len(self.scales)


# --------------------------------------------------------------------------------------------
# Spec strings and sizes.


def parse_codec_spec(spec: str) -> tuple[Codec, Compression]:
    """``"int8+zstd"`` -> ``(Codec.INT8, Compression.ZSTD)``; ``"fp16"`` means no compression.

    Specs come from configs and flags, so a bad one is a ``ConfigError`` naming the spec.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"codec spec must be a string such as 'int8+zstd', got {spec!r}")
    text = spec.strip().lower()
    codec_name, plus, compression_name = text.partition("+")
    try:
        codec = Codec(codec_name)
    except ValueError:
        names = ", ".join(c.value for c in Codec)
        raise ConfigError(
            f"codec spec {spec!r}: unknown codec {codec_name!r}; expected one of {names}, "
            "optionally followed by +zstd or +gzip"
        ) from None
    if not plus:
        return codec, Compression.NONE
    try:
        compression = Compression(compression_name)
    except ValueError:
        names = ", ".join(c.value for c in Compression)
        raise ConfigError(
            f"codec spec {spec!r}: unknown compression {compression_name!r}; "
            f"expected one of {names}"
        ) from None
    return codec, compression


def format_codec_spec(codec: Codec, compression: Compression = Compression.NONE) -> str:
    """The canonical spec string: ``"int8+zstd"``, or just ``"fp16"`` without compression."""
    if compression is Compression.NONE:
        return codec.value
    return f"{codec.value}+{compression.value}"


def payload_bytes(rows: int, hidden: int, codec: Codec) -> int:
    """Uncompressed wire bytes of a (rows, hidden) tensor under ``codec``, scales included.

    Exact before compression, so the policy can predict upload time from the input length
    without encoding anything; compression only makes the real payload smaller.
    """
    if rows < 0 or hidden < 0:
        raise ValueError(f"rows and hidden must be >= 0, got {rows} and {hidden}")
    dtype = CODEC_DTYPE[codec]
    size = rows * hidden * _WIRE_DTYPE[dtype].itemsize
    if codec is Codec.INT8:
        size += rows * SCALE_BYTES_PER_ROW
    return size


# --------------------------------------------------------------------------------------------
# Encoding (edge side: trusted input, but still refuse what the decoder would refuse).


def encode(
    hidden_states: np.ndarray,
    codec: Codec,
    compression: Compression = Compression.NONE,
    *,
    level: int | None = None,
) -> EncodedTensor:
    """Encode (rows, hidden) floating-point hidden states for the wire.

    ``level`` is the compression level (zstd 1..22, default 3; gzip 0..9, default 6). Raises
    ``CodecError`` for input the decoder would refuse (wrong rank, empty, NaN/Inf, beyond the
    float16 range), so an edge learns about it before paying for an upload.
    """
    if not isinstance(codec, Codec):
        raise ConfigError(f"codec must be a Codec, got {codec!r}")
    if not isinstance(compression, Compression):
        raise ConfigError(f"compression must be a Compression, got {compression!r}")
    h = np.asarray(hidden_states)
    if h.ndim != 2:
        raise CodecError(f"hidden states must be 2-D (rows, hidden), got shape {list(h.shape)}")
    rows, hidden = h.shape
    if rows == 0 or hidden == 0:
        raise CodecError(f"hidden states must not be empty, got shape {[rows, hidden]}")
    if not np.issubdtype(h.dtype, np.floating):
        raise CodecError(f"hidden states must be floating point, got {h.dtype}")
    if not np.isfinite(h).all():
        raise CodecError(f"hidden states contain NaN or Inf (shape {[rows, hidden]})")
    h = h.astype(np.float32, copy=False)  # (rows, hidden) float32

    scales = b""
    if codec is Codec.FP32:
        raw = h.astype("<f4", copy=False).tobytes()
    elif codec is Codec.FP16:
        peak = float(np.abs(h).max())
        if peak > FP16_MAX:
            raise CodecError(
                f"hidden states reach {peak:g}, beyond the float16 range ±{FP16_MAX:g}; "
                "use fp32 or int8"
            )
        raw = h.astype("<f2").tobytes()
    else:
        q, s = _quantize_int8(h)
        raw = q.tobytes()
        scales = s.astype(_SCALE_DTYPE, copy=False).tobytes()

    data = _compress(raw, compression, level)
    return EncodedTensor(
        codec=codec,
        compression=compression,
        dtype=CODEC_DTYPE[codec],
        shape=(int(rows), int(hidden)),
        data=data,
        scales=scales,
    )


def _quantize_int8(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: returns q (rows, hidden) int8 and scales (rows,) float32.

    q is computed against the float32 scale actually sent (in float64, so tiny scales cannot
    overflow), which keeps the decoder's ``q * scale`` within scale/2 of the input.
    """
    f32_max = float(np.finfo(np.float32).max)
    peak = np.abs(h).max(axis=1).astype(np.float64)  # (rows,)
    scales = (peak / INT8_LIMIT).astype(np.float32)  # (rows,) float32
    # Near the float32 limit, 127 * scale may round up past it; step the scale down one ulp.
    overflow = scales.astype(np.float64) * INT8_LIMIT > f32_max
    scales[overflow] = np.nextafter(scales[overflow], np.float32(0))
    divisor = np.where(scales > 0, scales, 1).astype(np.float64)[:, None]  # (rows, 1)
    q = np.rint(h.astype(np.float64) / divisor)  # round half to even
    np.clip(q, -INT8_LIMIT, INT8_LIMIT, out=q)
    q[scales == 0] = 0  # a zero (or underflowing) row decodes to zeros
    return q.astype(np.int8), scales


def _compress(raw: bytes, compression: Compression, level: int | None) -> bytes:
    if compression is Compression.NONE:
        return raw
    if compression is Compression.ZSTD:
        lvl = DEFAULT_ZSTD_LEVEL if level is None else level
        if not 1 <= lvl <= zstandard.MAX_COMPRESSION_LEVEL:
            raise ConfigError(
                f"zstd level must be in [1, {zstandard.MAX_COMPRESSION_LEVEL}], got {lvl}"
            )
        # Writes the content size into the frame header, so the decoder can refuse early.
        return zstandard.ZstdCompressor(level=lvl).compress(raw)
    lvl = DEFAULT_GZIP_LEVEL if level is None else level
    if not 0 <= lvl <= 9:
        raise ConfigError(f"gzip level must be in [0, 9], got {lvl}")
    return gzip.compress(raw, compresslevel=lvl, mtime=0)  # mtime=0: same input, same bytes


# --------------------------------------------------------------------------------------------
# Decoding (cloud side: untrusted input).


def decode(
    enc: EncodedTensor,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    hidden_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str = "hidden_states",
) -> np.ndarray:
    """Decode to a fresh (rows, hidden) float32 array, or raise ``CodecError``.

    Limits: at most ``max_rows`` rows, exactly ``hidden_size`` columns (any if None) and at
    most ``max_bytes`` decompressed payload bytes. All of them, the enums, shape, scales and
    byte lengths are checked before anything is allocated or decompressed; decompression stops
    one byte past the size the shape implies. ``name`` prefixes every error message
    ("hidden_states.data: ...") so it names the offending message field.
    """
    codec = _check_enum(enc.codec, Codec, f"{name}.codec")
    compression = _check_enum(enc.compression, Compression, f"{name}.compression")
    dtype = _check_enum(enc.dtype, DType, f"{name}.dtype")
    if dtype is not CODEC_DTYPE[codec]:
        raise CodecError(
            f"{name}.dtype: {dtype.value} does not match codec {codec.value}, "
            f"which produces {CODEC_DTYPE[codec].value}"
        )

    rows, hidden = _check_shape(enc.shape, f"{name}.shape")
    if rows > max_rows:
        raise CodecError(f"{name}.shape: {rows} rows exceed the limit of {max_rows}")
    if hidden_size is not None and hidden != hidden_size:
        raise CodecError(
            f"{name}.shape: hidden size {hidden} does not match the model's {hidden_size}"
        )
    wire_dtype = _WIRE_DTYPE[dtype]
    expected = rows * hidden * wire_dtype.itemsize
    what = f"shape [{rows}, {hidden}] {codec.value}"
    if expected > max_bytes:
        raise CodecError(
            f"{name}.shape: {what} needs {expected} bytes, over the limit of {max_bytes}"
        )

    data = _check_bytes(enc.data, f"{name}.data")
    scales_raw = _check_bytes(enc.scales, f"{name}.scales")
    if codec is Codec.INT8:
        want = rows * SCALE_BYTES_PER_ROW
        if len(scales_raw) != want:
            raise CodecError(
                f"{name}.scales: expected {want} bytes (one float32 per row) for {rows} rows, "
                f"got {len(scales_raw)}"
            )
    elif scales_raw:
        raise CodecError(
            f"{name}.scales: must be empty for {codec.value}, got {len(scales_raw)} bytes"
        )

    raw = _decompress(data, compression, expected, f"{name}.data", what)
    if len(raw) != expected:
        after = (
            "" if compression is Compression.NONE else f" after {compression.value} decompression"
        )
        raise CodecError(
            f"{name}.data: expected {expected} bytes for {what}, got {len(raw)}{after}"
        )

    values = np.frombuffer(raw, dtype=wire_dtype).reshape(rows, hidden)  # (rows, hidden) view
    if codec is Codec.INT8:
        scales = np.frombuffer(scales_raw, dtype=_SCALE_DTYPE)  # (rows,)
        bad = ~(np.isfinite(scales) & (scales >= 0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CodecError(
                f"{name}.scales: row {row} has scale {float(scales[row])!r}; "
                "scales must be finite and >= 0"
            )
        low = values == -INT8_LIMIT - 1
        if low.any():
            row, col = (int(i) for i in np.argwhere(low)[0])
            raise CodecError(
                f"{name}.data: int8 value -128 at row {row}, column {col}; "
                f"the codec uses [-{INT8_LIMIT}, {INT8_LIMIT}]"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            out = values.astype(np.float32) * scales.astype(np.float32)[:, None]
    else:
        out = values.astype(np.float32)  # a copy: owned, writable, native byte order

    finite = np.isfinite(out)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise CodecError(
            f"{name}.data: non-finite value {float(out[row, col])!r} at row {row}, column {col}"
        )
    return out


def _check_enum(value: object, kind: type[_E], field: str) -> _E:
    if isinstance(value, kind):
        return value
    names = ", ".join(m.value for m in kind)
    raise CodecError(f"{field}: unknown value {_short(value)}; expected one of {names}")


def _check_shape(shape: object, field: str) -> tuple[int, int]:
    """(rows, hidden) from an untrusted shape: exactly two positive integers."""
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
        raise CodecError(f"{field}: expected [rows, hidden], got {_short(shape)}")
    if len(shape) != 2:
        raise CodecError(f"{field}: expected [rows, hidden] (rank 2), got rank {len(shape)}")
    dims: list[int] = []
    for dim in shape:
        try:
            dims.append(operator.index(dim))
        except TypeError:
            raise CodecError(
                f"{field}: dimensions must be integers, got {_short(list(shape))}"
            ) from None
    if dims[0] <= 0 or dims[1] <= 0:
        raise CodecError(f"{field}: dimensions must be positive, got {dims}")
    return dims[0], dims[1]


def _check_bytes(value: object, field: str) -> bytes | memoryview:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        view = memoryview(value)
        if view.ndim != 1 or view.itemsize != 1 or not view.contiguous:
            raise CodecError(f"{field}: expected a flat byte buffer")
        return view
    raise CodecError(f"{field}: expected bytes, got {type(value).__name__}")


def _decompress(
    data: bytes | memoryview, compression: Compression, expected: int, field: str, what: str
) -> bytes | memoryview:
    """Decompress at most ``expected + 1`` bytes; the caller checks the exact length."""
    if compression is Compression.NONE:
        return data
    limit = expected + 1
    if compression is Compression.ZSTD:
        return _unzstd(data, expected, limit, field, what)
    return _gunzip(data, limit, field, what)


def _unzstd(data: bytes | memoryview, expected: int, limit: int, field: str, what: str) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise CodecError(f"{field}: not a zstd frame ({exc})") from None
    if declared >= 0 and declared != expected:
        raise CodecError(
            f"{field}: zstd frame declares {declared} bytes, expected {expected} for {what}"
        )
    # Only the streaming reader honours an output bound: ZstdDecompressor.decompress() trusts
    # the declared size and allocates it whole.
    window = max(_ZSTD_MIN_WINDOW_BYTES, 1 << max(expected - 1, 1).bit_length())
    chunks: list[bytes] = []
    got = 0
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=window).stream_reader(
            data, read_across_frames=True
        )
        while got < limit:
            chunk = reader.read(limit - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except zstandard.ZstdError as exc:
        raise CodecError(f"{field}: invalid zstd data ({exc})") from None
    if got > expected:
        raise CodecError(f"{field}: zstd data expands past the {expected} bytes of {what}")
    return b"".join(chunks)


def _gunzip(data: bytes | memoryview, limit: int, field: str, what: str) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip container only
    try:
        out = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise CodecError(f"{field}: invalid gzip data ({exc})") from None
    if len(out) >= limit:
        raise CodecError(f"{field}: gzip data expands past the {limit - 1} bytes of {what}")
    if not inflater.eof:
        raise CodecError(f"{field}: gzip data is truncated")
    if inflater.unused_data:
        raise CodecError(
            f"{field}: {len(inflater.unused_data)} unexpected bytes after the gzip member"
        )
    return out


def _short(value: object, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters, so a hostile field cannot flood an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "CODEC_DTYPE",
    "CODEC_SPECS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "Codec",
    "Compression",
    "DType",
    "EncodedTensor",
    "decode",
    "encode",
    "format_codec_spec",
    "parse_codec_spec",
    "payload_bytes",
]
