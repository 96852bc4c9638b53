"""Wire mapping: EncodedTensor <-> tandem.v1.Tensor, and DecodeRequest building.

The invariant for the cloud's entry point: any ``Tensor`` message, however its fields are
filled (unknown enum numbers included), decodes to a float32 array or raises ``CodecError``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem import wire
from tandem.errors import CodecError, InputError
from tandem.runtime.codec import Codec, Compression, decode, encode
from tandem.v1 import decoder_pb2, edge_pb2

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hidden(rows: int = 12, width: int = 16) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32)


@pytest.mark.parametrize("codec", list(Codec), ids=lambda c: c.value)
@pytest.mark.parametrize("compression", list(Compression), ids=lambda c: c.value)
def test_tensor_round_trip_through_serialized_message(
    codec: Codec, compression: Compression
) -> None:
    enc = encode(hidden(), codec, compression)
    msg = wire.to_proto(enc)
    received = decoder_pb2.Tensor.FromString(msg.SerializeToString())
    assert wire.from_proto(received) == enc
    np.testing.assert_array_equal(
        wire.decode_tensor(received, max_rows=12, hidden_size=16), decode(enc)
    )


def test_proto_enum_numbers_are_the_documented_ones() -> None:
    """The numbers are the contract; renumbering would break deployed clients."""
    assert [wire.codec_to_proto(c) for c in Codec] == [1, 2, 3]
    assert [wire.compression_to_proto(c) for c in Compression] == [1, 2, 3]
    assert wire.to_proto(encode(hidden(), Codec.INT8)).dtype == decoder_pb2.DTYPE_INT8 == 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "codec",
            0,
            r"^hidden_states\.codec: CODEC_UNSPECIFIED is not allowed; "
            r"set one of CODEC_FP32, CODEC_FP16, CODEC_INT8$",
        ),
        ("codec", 9, r"^hidden_states\.codec: unknown value 9"),
        ("compression", 0, r"^hidden_states\.compression: COMPRESSION_UNSPECIFIED"),
        ("compression", -4, r"^hidden_states\.compression: unknown value -4"),
        ("dtype", 0, r"^hidden_states\.dtype: DTYPE_UNSPECIFIED"),
        ("dtype", 77, r"^hidden_states\.dtype: unknown value 77"),
    ],
)
def test_from_proto_rejects_unspecified_and_unknown_enums(
    field: str, value: int, message: str
) -> None:
    msg = wire.to_proto(encode(hidden(), Codec.FP16))
    setattr(msg, field, value)
    received = decoder_pb2.Tensor.FromString(msg.SerializeToString())
    with pytest.raises(CodecError, match=message):
        wire.from_proto(received)


def test_empty_message_is_a_codec_error() -> None:
    """A request whose hidden_states were never set fails cleanly, naming the field."""
    with pytest.raises(CodecError, match=r"^hidden_states\.codec"):
        wire.decode_tensor(decoder_pb2.DecodeRequest().hidden_states)


def test_decode_tensor_applies_limits_and_name() -> None:
    msg = wire.to_proto(encode(hidden(), Codec.FP32))
    with pytest.raises(CodecError, match=r"^h\.shape: 12 rows exceed the limit of 8"):
        wire.decode_tensor(msg, max_rows=8, name="h")
    with pytest.raises(CodecError, match="hidden size 16 does not match the model's 32"):
        wire.decode_tensor(msg, hidden_size=32)


enum_numbers = st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))


@st.composite
def tensor_messages(draw: st.DrawFn) -> decoder_pb2.Tensor:
    """Arbitrary Tensor messages, sometimes starting from a valid encoding."""
    if draw(st.booleans()):
        codec = draw(st.sampled_from(list(Codec)))
        compression = draw(st.sampled_from(list(Compression)))
        rows, width = draw(st.integers(1, 4)), draw(st.integers(1, 5))
        values = np.asarray(
            draw(
                st.lists(st.floats(-50, 50, width=32), min_size=rows * width, max_size=rows * width)
            ),
            dtype=np.float32,
        ).reshape(rows, width)
        msg = wire.to_proto(encode(values, codec, compression))
    else:
        msg = decoder_pb2.Tensor()
    for field, strategy in {
        "dtype": enum_numbers,
        "codec": enum_numbers,
        "compression": enum_numbers,
        "scales": st.binary(max_size=48),
        "data": st.binary(max_size=200),
    }.items():
        if draw(st.booleans()):
            setattr(msg, field, draw(strategy))
    if draw(st.booleans()):
        del msg.shape[:]
        msg.shape.extend(
            draw(
                st.lists(
                    st.one_of(st.integers(-2, 6), st.integers(-(2**63), 2**63 - 1)), max_size=4
                )
            )
        )
    # What a server sees is what survives serialization.
    return decoder_pb2.Tensor.FromString(msg.SerializeToString())


@FUZZ
@given(msg=tensor_messages())
def test_any_tensor_message_decodes_or_raises_codec_error(msg: decoder_pb2.Tensor) -> None:
    try:
        out = wire.decode_tensor(msg, max_rows=16, max_bytes=4096)
    except CodecError:
        return
    assert out.dtype == np.float32
    assert out.shape == tuple(msg.shape)
    assert np.isfinite(out).all()


# --- DecodeRequest ---------------------------------------------------------------------------


def test_build_decode_request_sets_every_field() -> None:
    enc = encode(hidden(), Codec.INT8, Compression.ZSTD)
    req = wire.build_decode_request(
        request_id="r-1",
        model_fingerprint="sha256:" + "ab" * 32,
        hidden_states=enc,
        source_length=10,
        max_new_tokens=64,
        min_new_tokens=2,
        target_language="fra_Latn",
        eos_token_id=2,
        prefix=[256057, 17, 42],
    )
    req = decoder_pb2.DecodeRequest.FromString(req.SerializeToString())
    assert req.request_id == "r-1"
    assert req.model_fingerprint.startswith("sha256:")
    assert wire.from_proto(req.hidden_states) == enc
    assert req.source_length == 10
    assert req.params.max_new_tokens == 64 and req.params.min_new_tokens == 2
    assert req.params.WhichOneof("first_token") == "target_language"
    assert req.params.target_language == "fra_Latn"
    assert req.params.HasField("eos_token_id") and req.params.eos_token_id == 2
    assert list(req.prefix) == [256057, 17, 42]


def test_build_decode_request_leaves_optional_fields_unset() -> None:
    req = wire.build_decode_request(
        request_id="r-2",
        model_fingerprint="sha256:00",
        hidden_states=encode(hidden(), Codec.FP16),
        source_length=12,
        forced_first_token=0,  # token id 0 is a real id, not "unset"
    )
    assert req.params.WhichOneof("first_token") == "forced_first_token"
    assert req.params.forced_first_token == 0
    assert not req.params.HasField("eos_token_id")
    assert req.params.max_new_tokens == 0  # the model's limit
    assert list(req.prefix) == []


def test_build_decode_request_refuses_both_first_token_kinds() -> None:
    with pytest.raises(InputError, match="not both"):
        wire.build_decode_request(
            request_id="r-3",
            model_fingerprint="sha256:00",
            hidden_states=encode(hidden(), Codec.FP16),
            source_length=12,
            forced_first_token=5,
            target_language="deu_Latn",
        )


# --- the rest of the contract ----------------------------------------------------------------


def test_decode_event_stream_messages() -> None:
    chunk = decoder_pb2.DecodeEvent(tokens=decoder_pb2.TokenChunk(start=3, ids=[7, 8]))
    final = decoder_pb2.DecodeEvent(
        final=decoder_pb2.DecodeFinal(
            reason=decoder_pb2.FINISH_REASON_EOS,
            queue_ms=1.5,
            decode_ms=20.0,
            token_count=5,
            replica_id="cloud-0",
        )
    )
    assert chunk.WhichOneof("event") == "tokens"
    assert final.WhichOneof("event") == "final"
    assert decoder_pb2.FinishReason.Name(final.final.reason) == "FINISH_REASON_EOS"


def test_model_info_carries_limits_languages_and_codecs() -> None:
    info = decoder_pb2.ModelInfo(
        name="toy",
        fingerprint="sha256:00",
        hidden_size=16,
        vocab_size=100,
        max_source_length=128,
        max_new_tokens=64,
        eos_token_id=2,
        decoder_start_token_id=2,
        languages={"fra_Latn": 90},
        codecs=[wire.codec_to_proto(c) for c in Codec],
        compressions=[wire.compression_to_proto(c) for c in Compression],
    )
    got = decoder_pb2.ListModelsResponse.FromString(
        decoder_pb2.ListModelsResponse(models=[info]).SerializeToString()
    ).models[0]
    assert got.languages["fra_Latn"] == 90
    assert [wire.codec_from_proto(c) for c in got.codecs] == list(Codec)
    assert [wire.compression_from_proto(c) for c in got.compressions] == list(Compression)


def test_edge_messages() -> None:
    req = edge_pb2.GenerateRequest(
        request_id="a",
        text="hi",
        target_language="fra_Latn",
        max_new_tokens=8,
        local_only=True,
        deadline_ms=500,
    )
    final = edge_pb2.GenerateFinal(
        route="cloud",
        reason="cloud_cheaper",
        fallbacks=["stream_broken"],
        encode_ms=1.0,
        upload_ms=2.0,
        first_token_ms=3.0,
        total_ms=4.0,
        text="salut",
        ids=[5, 6],
        token_count=2,
        finish_reason=decoder_pb2.FINISH_REASON_EOS,
    )
    event = edge_pb2.GenerateEvent(piece=edge_pb2.TextPiece(text="sa", ids=[5], start=0))
    assert edge_pb2.GenerateRequest.FromString(req.SerializeToString()) == req
    assert edge_pb2.GenerateEvent(final=final).WhichOneof("event") == "final"
    assert event.WhichOneof("event") == "piece"


def test_finish_reasons_map_one_to_one_onto_the_wire():
    """Every named FinishReason but UNSPECIFIED has exactly one finish name, and back."""
    names = ["eos", "length", "cancelled", "deadline"]
    numbers = [wire.finish_to_proto(name) for name in names]
    assert sorted(numbers) == sorted(v for v in decoder_pb2.FinishReason.values() if v != 0)
    assert [wire.finish_from_proto(n) for n in numbers] == names
    assert wire.finish_from_proto(decoder_pb2.FINISH_REASON_UNSPECIFIED) == "unspecified"
    assert wire.finish_from_proto(99, default="length") == "length"  # a newer peer's reason
    with pytest.raises(ValueError, match="unknown finish reason 'stop'"):
        wire.finish_to_proto("stop")
