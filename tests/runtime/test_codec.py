"""Hidden-state codec: round trips within stated error bounds, and hostile input.

The invariant under test for ``decode``: whatever the fields hold, the result is a finite
(rows, hidden) float32 array or a ``CodecError`` — nothing else escapes, nothing unbounded is
allocated.
"""

from __future__ import annotations

import dataclasses
import gzip
import tracemalloc
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tandem.errors import CodecError, ConfigError
from tandem.runtime.codec import (
    CODEC_DTYPE,
    CODEC_SPECS,
    Codec,
    Compression,
    DType,
    EncodedTensor,
    decode,
    encode,
    format_codec_spec,
    parse_codec_spec,
    payload_bytes,
)

ALL_PAIRS = [(c, z) for c in Codec for z in Compression]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hidden(rows: int = 40, width: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((rows, width)).astype(np.float32) * 3  # (rows, hidden) float32
    if rows > 3:
        h[3] = 0.0  # a zero row: int8 scale 0
    return h


def int8_scales(enc: EncodedTensor) -> np.ndarray:
    return np.frombuffer(enc.scales, dtype="<f4")


def assert_within_bound(enc: EncodedTensor, h: np.ndarray, out: np.ndarray) -> None:
    """The documented per-codec error bound."""
    assert out.dtype == np.float32 and out.shape == h.shape
    if enc.codec is Codec.FP32:
        np.testing.assert_array_equal(out, h)
    elif enc.codec is Codec.FP16:
        # float16 round-to-nearest: relative 2**-11, absolute at the subnormal step.
        np.testing.assert_allclose(out, h, rtol=2**-11, atol=2**-25)
    else:
        scale = int8_scales(enc)[:, None]  # (rows, 1)
        bound = scale / 2 * (1 + 1e-5) + 1e-38
        assert (np.abs(out.astype(np.float64) - h) <= bound).all()


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "compression"), ALL_PAIRS, ids=lambda v: v.value)
def test_round_trip_within_bound(codec: Codec, compression: Compression) -> None:
    h = hidden()
    enc = encode(h, codec, compression)
    assert enc.codec is codec and enc.compression is compression
    assert enc.dtype is CODEC_DTYPE[codec]
    assert enc.shape == (40, 256)
    out = decode(enc, max_rows=40, hidden_size=256)
    assert_within_bound(enc, h, out)
    if codec is Codec.INT8:
        np.testing.assert_array_equal(out[3], 0.0)
        assert int8_scales(enc)[3] == 0.0


@pytest.mark.parametrize("codec", list(Codec), ids=lambda c: c.value)
def test_payload_bytes_is_the_uncompressed_wire_size(codec: Codec) -> None:
    enc = encode(hidden(rows=7, width=33), codec)
    assert enc.wire_bytes == payload_bytes(7, 33, codec)


def test_payload_bytes_values() -> None:
    assert payload_bytes(40, 256, Codec.FP32) == 40960
    assert payload_bytes(40, 256, Codec.FP16) == 20480
    assert payload_bytes(40, 256, Codec.INT8) == 40 * 256 + 40 * 4


def test_compression_shrinks_redundant_states() -> None:
    h = np.tile(hidden(rows=1), (64, 1))  # (64, 256): highly redundant
    raw = encode(h, Codec.FP32)
    for compression in (Compression.ZSTD, Compression.GZIP):
        assert encode(h, Codec.FP32, compression).wire_bytes < raw.wire_bytes // 10


def test_decoded_array_is_owned_and_writable() -> None:
    out = decode(encode(hidden(), Codec.FP32))
    assert out.flags.writeable  # not a read-only view of the message bytes
    out[0, 0] = 1.0


def test_gzip_encoding_is_deterministic() -> None:
    h = hidden()
    assert encode(h, Codec.FP16, Compression.GZIP) == encode(h, Codec.FP16, Compression.GZIP)


def test_int8_uses_half_even_rounding_and_full_range() -> None:
    h = np.array([[127.0, -127.0, 0.5, 1.5, -0.5, 2.5]], dtype=np.float32)
    enc = encode(h, Codec.INT8)
    assert int8_scales(enc)[0] == np.float32(1.0)
    q = np.frombuffer(enc.data, dtype=np.int8)
    np.testing.assert_array_equal(q, [127, -127, 0, 2, 0, 2])


@FUZZ
@given(
    codec=st.sampled_from(list(Codec)),
    h=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, max_side=12),
        elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=True),
    ),
)
def test_round_trip_property(codec: Codec, h: np.ndarray) -> None:
    """Any finite float32 matrix in range round-trips within its codec's bound."""
    enc = encode(h, codec, Compression.ZSTD)
    assert_within_bound(enc, h, decode(enc))


@FUZZ
@given(
    h=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    )
)
def test_int8_round_trip_over_the_whole_float32_range(h: np.ndarray) -> None:
    """Extremes (near float32 max, subnormals) never make int8 emit what decode refuses."""
    enc = encode(h, Codec.INT8)
    assert_within_bound(enc, h, decode(enc))


# --- encode refuses what decode would refuse -------------------------------------------------


@pytest.mark.parametrize(
    ("h", "message"),
    [
        (np.zeros((2, 3, 4), np.float32), "2-D"),
        (np.zeros((0, 4), np.float32), "empty"),
        (np.zeros((2, 4), np.int64), "floating point"),
        (np.array([[1.0, np.nan]], np.float32), "NaN or Inf"),
        (np.array([[1.0, np.inf]], np.float32), "NaN or Inf"),
    ],
)
def test_encode_rejects_bad_input(h: np.ndarray, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(h, Codec.FP32)


def test_encode_fp16_refuses_values_beyond_its_range() -> None:
    with pytest.raises(CodecError, match="float16 range"):
        encode(np.array([[70000.0]], np.float32), Codec.FP16)
    encode(np.array([[70000.0]], np.float32), Codec.INT8)  # int8 copes


def test_encode_checks_compression_level() -> None:
    with pytest.raises(ConfigError, match="zstd level"):
        encode(hidden(), Codec.FP16, Compression.ZSTD, level=99)
    with pytest.raises(ConfigError, match="gzip level"):
        encode(hidden(), Codec.FP16, Compression.GZIP, level=10)


# --- decode: precise errors ------------------------------------------------------------------


def test_decode_names_field_and_sizes_on_wrong_length() -> None:
    enc = encode(hidden(), Codec.FP16)
    bad = dataclasses.replace(enc, data=enc.data[:-2])
    with pytest.raises(CodecError) as info:
        decode(bad)
    assert str(info.value) == (
        "hidden_states.data: expected 20480 bytes for shape [40, 256] fp16, got 20478"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"codec": "fp16"}, r"^hidden_states\.codec: unknown value 'fp16'"),
        ({"compression": 2}, r"^hidden_states\.compression: unknown value 2"),
        ({"dtype": None}, r"^hidden_states\.dtype: unknown value None"),
        ({"dtype": DType.FLOAT32}, r"^hidden_states\.dtype: float32 does not match codec fp16"),
        ({"shape": (40,)}, r"^hidden_states\.shape: expected \[rows, hidden\] \(rank 2\)"),
        ({"shape": (40, 256, 1)}, r"rank 3"),
        ({"shape": (0, 256)}, r"^hidden_states\.shape: dimensions must be positive"),
        ({"shape": (-40, -256)}, r"dimensions must be positive"),
        ({"shape": (40.0, 256)}, r"dimensions must be integers"),
        ({"shape": "40x256"}, r"^hidden_states\.shape: expected \[rows, hidden\]"),
        ({"shape": (2**62, 2**62)}, r"rows exceed the limit"),
        ({"scales": b"\0" * 4}, r"^hidden_states\.scales: must be empty for fp16, got 4 bytes"),
        ({"data": "text"}, r"^hidden_states\.data: expected bytes, got str"),
        ({"compression": Compression.ZSTD}, r"^hidden_states\.data: not a zstd frame"),
        ({"compression": Compression.GZIP}, r"^hidden_states\.data: invalid gzip data"),
    ],
)
def test_decode_rejects_malformed_fields(change: dict, message: str) -> None:
    enc = dataclasses.replace(encode(hidden(), Codec.FP16), **change)
    with pytest.raises(CodecError, match=message):
        decode(enc)


def test_decode_enforces_limits_before_touching_data() -> None:
    enc = dataclasses.replace(encode(hidden(), Codec.FP32), data=b"")
    with pytest.raises(CodecError, match="40 rows exceed the limit of 39"):
        decode(enc, max_rows=39)
    with pytest.raises(CodecError, match="hidden size 256 does not match the model's 512"):
        decode(enc, hidden_size=512)
    with pytest.raises(CodecError, match="needs 40960 bytes, over the limit of 40959"):
        decode(enc, max_bytes=40959)


def test_decode_custom_field_name_prefixes_messages() -> None:
    enc = dataclasses.replace(encode(hidden(), Codec.FP32), data=b"")
    with pytest.raises(CodecError, match=r"^request\.h\.data: "):
        decode(enc, name="request.h")


def test_int8_scales_are_checked() -> None:
    enc = encode(hidden(), Codec.INT8)
    with pytest.raises(CodecError, match=r"scales: expected 160 bytes \(one float32 per row\)"):
        decode(dataclasses.replace(enc, scales=enc.scales[:-1]))
    for bad in (np.nan, np.inf, -1.0):
        scales = int8_scales(enc).copy()
        scales[5] = bad
        with pytest.raises(CodecError, match="row 5 has scale"):
            decode(dataclasses.replace(enc, scales=scales.astype("<f4").tobytes()))


def test_int8_minus_128_is_refused() -> None:
    enc = encode(hidden(), Codec.INT8)
    q = np.frombuffer(enc.data, dtype=np.int8).copy()
    q[256 + 7] = -128
    with pytest.raises(CodecError, match="-128 at row 1, column 7"):
        decode(dataclasses.replace(enc, data=q.tobytes()))


def test_int8_overflowing_product_is_refused() -> None:
    enc = encode(np.ones((1, 4), np.float32), Codec.INT8)
    huge = np.array([3e38], dtype="<f4").tobytes()  # 127 * 3e38 overflows float32
    with pytest.raises(CodecError, match="non-finite value inf at row 0"):
        decode(dataclasses.replace(enc, scales=huge))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("codec", [Codec.FP32, Codec.FP16], ids=lambda c: c.value)
def test_non_finite_values_are_refused(codec: Codec, bad: float) -> None:
    enc = encode(hidden(rows=4, width=8), codec)
    values = np.frombuffer(enc.data, dtype=np.dtype(enc.dtype.value).newbyteorder("<")).copy()
    values[2 * 8 + 5] = bad
    with pytest.raises(CodecError, match="non-finite value .* at row 2, column 5"):
        decode(dataclasses.replace(enc, data=values.tobytes()))


def test_compressed_payload_of_wrong_size_is_refused() -> None:
    enc = encode(hidden(), Codec.FP16)
    short = zstandard.ZstdCompressor().compress(enc.data[:-2])
    with pytest.raises(CodecError, match="zstd frame declares 20478 bytes, expected 20480"):
        decode(dataclasses.replace(enc, compression=Compression.ZSTD, data=short))
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(enc.data[:-2])
    with pytest.raises(CodecError, match="got 20478 after zstd decompression"):
        decode(dataclasses.replace(enc, compression=Compression.ZSTD, data=no_size))
    long = gzip.compress(enc.data + b"\0")
    with pytest.raises(CodecError, match="gzip data expands past the 20480 bytes"):
        decode(dataclasses.replace(enc, compression=Compression.GZIP, data=long))


def test_gzip_truncated_or_trailing_bytes_are_refused() -> None:
    enc = encode(hidden(), Codec.FP16, Compression.GZIP)
    with pytest.raises(CodecError, match="truncated"):
        decode(dataclasses.replace(enc, data=enc.data[:-4]))
    with pytest.raises(CodecError, match="unexpected bytes after the gzip member"):
        decode(dataclasses.replace(enc, data=enc.data + enc.data))


def test_zstd_extra_frames_are_refused() -> None:
    enc = encode(hidden(), Codec.FP16, Compression.ZSTD)
    with pytest.raises(CodecError, match="zstd data expands past the 20480 bytes"):
        decode(dataclasses.replace(enc, data=enc.data + enc.data))


# --- bounded decompression -------------------------------------------------------------------

BOMB_BYTES = 100_000_000


@pytest.fixture(scope="module")
def bombs() -> dict[Compression, bytes]:
    zeros = bytes(BOMB_BYTES)
    sized = zstandard.ZstdCompressor(level=1).compress(zeros)
    unsized = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(zeros)
    gz = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return {
        Compression.ZSTD: sized,
        Compression.NONE: unsized,  # stands for "zstd without a declared size"
        Compression.GZIP: gz.compress(zeros) + gz.flush(),
    }


@pytest.mark.parametrize(
    "kind",
    [Compression.ZSTD, Compression.NONE, Compression.GZIP],
    ids=["zstd", "zstd-unsized", "gzip"],
)
def test_decompression_bomb_raises_without_expanding(
    bombs: dict[Compression, bytes], kind: Compression
) -> None:
    bomb = bombs[kind]
    assert len(bomb) < 500_000  # a small message that claims 100 MB
    compression = Compression.GZIP if kind is Compression.GZIP else Compression.ZSTD
    # The shape allows 1 MiB; the payload expands to 100 MB of zeros.
    enc = EncodedTensor(
        Codec.FP32, compression, DType.FLOAT32, shape=(1024, 256), data=bomb, scales=b""
    )
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="hidden_states.data: .*(expands past|declares)"):
            decode(enc, max_rows=1024, hidden_size=256)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 8 * 1024 * 1024  # bounded by the declared 1 MiB, not the 100 MB


# --- the decode invariant --------------------------------------------------------------------

junk = st.one_of(st.none(), st.integers(-3, 5), st.text(max_size=5), st.binary(max_size=3))
dims = st.one_of(st.integers(1, 6), st.integers(-(2**63), 2**63 - 1))
shapes = st.one_of(
    st.tuples(dims, dims),
    st.lists(dims, max_size=4).map(tuple),
    st.lists(st.one_of(dims, st.floats(), st.none()), max_size=3),
    junk,
)


@st.composite
def encoded_tensors(draw: st.DrawFn) -> EncodedTensor:
    """Valid encodings with any subset of fields replaced by arbitrary values."""
    codec = draw(st.sampled_from(list(Codec)))
    compression = draw(st.sampled_from(list(Compression)))
    rows, width = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    h = draw(hnp.arrays(np.float32, (rows, width), elements=st.floats(-100, 100, width=32)))
    enc = encode(h, codec, compression)
    choices = {
        "codec": st.one_of(st.sampled_from(list(Codec)), junk),
        "compression": st.one_of(st.sampled_from(list(Compression)), junk),
        "dtype": st.one_of(st.sampled_from(list(DType)), junk),
        "shape": shapes,
        "data": st.one_of(
            st.binary(max_size=256),
            st.just(enc.data).map(lambda b: b[: len(b) // 2]),
            st.binary(min_size=1, max_size=1).map(lambda b: enc.data[:-1] + b),
            junk,
        ),
        "scales": st.one_of(st.binary(max_size=40), junk),
    }
    replaced = draw(st.sets(st.sampled_from(sorted(choices))))
    return dataclasses.replace(enc, **{f: draw(choices[f]) for f in replaced})


@FUZZ
@given(enc=encoded_tensors())
def test_decode_yields_float32_or_codec_error(enc: EncodedTensor) -> None:
    """Any field values: a finite float32 array of the declared shape, or CodecError."""
    try:
        out = decode(enc, max_rows=64, hidden_size=None, max_bytes=1 << 16)
    except CodecError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == tuple(enc.shape)
    assert np.isfinite(out).all()


@FUZZ
@given(
    data=st.binary(max_size=512),
    scales=st.binary(max_size=64),
    codec=st.sampled_from(list(Codec)),
    compression=st.sampled_from(list(Compression)),
    rows=st.integers(1, 8),
    width=st.integers(1, 16),
)
def test_decode_any_bytes(
    data: bytes, scales: bytes, codec: Codec, compression: Compression, rows: int, width: int
) -> None:
    """Any bytes under a consistent header: float32 array or CodecError."""
    enc = EncodedTensor(codec, compression, CODEC_DTYPE[codec], (rows, width), data, scales)
    try:
        out = decode(enc)
    except CodecError:
        return
    assert out.dtype == np.float32 and out.shape == (rows, width)


# --- spec strings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("int8+zstd", (Codec.INT8, Compression.ZSTD)),
        ("fp16", (Codec.FP16, Compression.NONE)),
        (" FP32+GZIP ", (Codec.FP32, Compression.GZIP)),
        ("int8+none", (Codec.INT8, Compression.NONE)),
    ],
)
def test_parse_codec_spec(spec: str, expected: tuple[Codec, Compression]) -> None:
    assert parse_codec_spec(spec) == expected


def test_codec_specs_round_trip() -> None:
    assert len(CODEC_SPECS) == 9
    for spec in CODEC_SPECS:
        assert format_codec_spec(*parse_codec_spec(spec)) == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("int4", "unknown codec 'int4'"),
        ("int8+lz4", "unknown compression 'lz4'"),
        ("", "unknown codec ''"),
        ("int8+", "unknown compression ''"),
        (8, "must be a string"),
    ],
)
def test_parse_codec_spec_errors(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_codec_spec(spec)  # type: ignore[arg-type]
