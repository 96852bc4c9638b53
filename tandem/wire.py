"""Wire mapping: ``tandem.runtime.codec`` values <-> ``tandem.v1`` protobuf messages.

The codec stays free of protobuf so the runtime can run (and be tested) without grpc; this
module is the one place that knows both. ``from_proto`` is the cloud's entry point for
untrusted hidden states: unknown or UNSPECIFIED enum numbers become ``CodecError`` naming the
field, and ``codec.decode`` checks everything else. ``build_decode_request`` is the edge's
single way to fill a ``DecodeRequest``, so the oneof and optional fields are set the same way
everywhere. ``check_request_id`` is the one rule for request ids: the cloud applies it to every
request, and the agent to an app's id before forwarding it (so a bad id is the app's error,
never a cloud failure that counts against the breaker). ``finish_to_proto`` and
``finish_from_proto`` are the one mapping of finish reasons (``eos``, ``length``,
``cancelled``, ``deadline``) to ``tandem.v1.FinishReason`` and back, for the cloud's stream and
the edge's alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from tandem.errors import CodecError, InputError
from tandem.runtime.codec import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    Codec,
    Compression,
    DType,
    EncodedTensor,
    decode,
)
from tandem.v1 import decoder_pb2

log = logging.getLogger(__name__)

MAX_REQUEST_ID_CHARS = 128
"""decoder.proto and edge.proto: a request id has at most 128 characters."""


_CODEC_TO_PROTO: dict[Codec, int] = {
    Codec.FP32: decoder_pb2.CODEC_FP32,
    Codec.FP16: decoder_pb2.CODEC_FP16,
    Codec.INT8: decoder_pb2.CODEC_INT8,
}
_COMPRESSION_TO_PROTO: dict[Compression, int] = {
    Compression.NONE: decoder_pb2.COMPRESSION_NONE,
    Compression.ZSTD: decoder_pb2.COMPRESSION_ZSTD,
    Compression.GZIP: decoder_pb2.COMPRESSION_GZIP,
}
_DTYPE_TO_PROTO: dict[DType, int] = {
    DType.FLOAT32: decoder_pb2.DTYPE_FLOAT32,
    DType.FLOAT16: decoder_pb2.DTYPE_FLOAT16,
    DType.INT8: decoder_pb2.DTYPE_INT8,
}
_FINISH_TO_PROTO: dict[str, int] = {
    "eos": decoder_pb2.FINISH_REASON_EOS,
    "length": decoder_pb2.FINISH_REASON_LENGTH,
    "cancelled": decoder_pb2.FINISH_REASON_CANCELLED,
    "deadline": decoder_pb2.FINISH_REASON_DEADLINE,
}
_CODEC_FROM_PROTO = {v: k for k, v in _CODEC_TO_PROTO.items()}
_FINISH_FROM_PROTO = {v: k for k, v in _FINISH_TO_PROTO.items()}
_COMPRESSION_FROM_PROTO = {v: k for k, v in _COMPRESSION_TO_PROTO.items()}
_DTYPE_FROM_PROTO = {v: k for k, v in _DTYPE_TO_PROTO.items()}


def codec_to_proto(codec: Codec) -> int:
    """The ``tandem.v1.Codec`` number of ``codec`` (e.g. for ``ModelInfo.codecs``)."""
    return _CODEC_TO_PROTO[codec]


def compression_to_proto(compression: Compression) -> int:
    """The ``tandem.v1.Compression`` number of ``compression``."""
    return _COMPRESSION_TO_PROTO[compression]


def finish_to_proto(finish: str) -> int:
    """The ``tandem.v1.FinishReason`` number of a finish reason; an unknown name is a bug."""
    try:
        return _FINISH_TO_PROTO[finish]
    except KeyError:
        raise ValueError(f"unknown finish reason {finish!r}") from None


def finish_from_proto(value: int, default: str = "unspecified") -> str:
    """The finish reason of a ``tandem.v1.FinishReason`` number; ``default`` for UNSPECIFIED
    or a number this version does not know."""
    return _FINISH_FROM_PROTO.get(value, default)


def codec_from_proto(value: int, field: str = "codec") -> Codec:
    """``tandem.v1.Codec`` number -> ``Codec``; UNSPECIFIED or unknown is ``CodecError``."""
    return _from_proto(value, _CODEC_FROM_PROTO, decoder_pb2.Codec, field)


def compression_from_proto(value: int, field: str = "compression") -> Compression:
    """``tandem.v1.Compression`` number -> ``Compression``; UNSPECIFIED or unknown is ``CodecError``."""
    return _from_proto(value, _COMPRESSION_FROM_PROTO, decoder_pb2.Compression, field)


def dtype_from_proto(value: int, field: str = "dtype") -> DType:
    """``tandem.v1.DType`` number -> ``DType``; UNSPECIFIED or unknown is ``CodecError``."""
    return _from_proto(value, _DTYPE_FROM_PROTO, decoder_pb2.DType, field)


def _from_proto(value: int, table: dict, enum_type, field: str):
    member = table.get(value)
    if member is not None:
        return member
    valid = ", ".join(enum_type.Name(number) for number in table)
    if value == 0:
        raise CodecError(f"{field}: {enum_type.Name(0)} is not allowed; set one of {valid}")
    raise CodecError(f"{field}: unknown value {value}; expected one of {valid}")


def to_proto(enc: EncodedTensor) -> decoder_pb2.Tensor:
    """The ``tandem.v1.Tensor`` message carrying ``enc``."""
    return decoder_pb2.Tensor(
        dtype=_DTYPE_TO_PROTO[enc.dtype],
        shape=list(enc.shape),
        codec=_CODEC_TO_PROTO[enc.codec],
        scales=bytes(enc.scales),
        compression=_COMPRESSION_TO_PROTO[enc.compression],
        data=bytes(enc.data),
    )


def from_proto(msg: decoder_pb2.Tensor, *, name: str = "hidden_states") -> EncodedTensor:
    """An ``EncodedTensor`` from a received message; enum numbers are checked here.

    Shape and bytes are copied as they are (no allocation proportional to the payload beyond
    what protobuf already holds); ``codec.decode`` validates them against the limits.
    """
    return EncodedTensor(
        codec=codec_from_proto(msg.codec, f"{name}.codec"),
        compression=compression_from_proto(msg.compression, f"{name}.compression"),
        dtype=dtype_from_proto(msg.dtype, f"{name}.dtype"),
        shape=tuple(msg.shape),
        data=msg.data,
        scales=msg.scales,
    )


def decode_tensor(
    msg: decoder_pb2.Tensor,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    hidden_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str = "hidden_states",
) -> np.ndarray:
    """``from_proto`` then ``codec.decode``: a (rows, hidden) float32 array or ``CodecError``."""
    enc = from_proto(msg, name=name)
    return decode(enc, max_rows=max_rows, hidden_size=hidden_size, max_bytes=max_bytes, name=name)


def build_decode_request(
    *,
    request_id: str,
    model_fingerprint: str,
    hidden_states: EncodedTensor,
    source_length: int,
    max_new_tokens: int = 0,
    min_new_tokens: int = 0,
    forced_first_token: int | None = None,
    target_language: str | None = None,
    eos_token_id: int | None = None,
    prefix: Iterable[int] = (),
) -> decoder_pb2.DecodeRequest:
    """A ``DecodeRequest`` with every field set the way decoder.proto documents it.

    ``forced_first_token`` and ``target_language`` share a oneof; setting both would silently
    keep only one, so it is an ``InputError`` here. ``None`` leaves optional fields unset (the
    server then uses the model's defaults). ``max_new_tokens=0`` means the model's limit.
    """
    if forced_first_token is not None and target_language is not None:
        raise InputError("set forced_first_token or target_language, not both")
    params = decoder_pb2.GenerationParams(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens
    )
    if forced_first_token is not None:
        params.forced_first_token = forced_first_token
    if target_language is not None:
        params.target_language = target_language
    if eos_token_id is not None:
        params.eos_token_id = eos_token_id
    return decoder_pb2.DecodeRequest(
        request_id=request_id,
        model_fingerprint=model_fingerprint,
        hidden_states=to_proto(hidden_states),
        source_length=source_length,
        params=params,
        prefix=list(prefix),
    )


def check_request_id(request_id: str) -> str:
    """The request id, checked first so every later log line and error can carry it."""
    if not request_id:
        raise InputError("request_id is empty; set a unique id (a UUID) per request")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InputError(
            f"request_id has {len(request_id)} characters; at most {MAX_REQUEST_ID_CHARS} allowed"
        )
    if not request_id.isprintable():
        raise InputError("request_id contains control characters")  # they would forge log lines
    return request_id


__all__ = [
    "MAX_REQUEST_ID_CHARS",
    "check_request_id",
    "build_decode_request",
    "codec_from_proto",
    "codec_to_proto",
    "compression_from_proto",
    "compression_to_proto",
    "decode_tensor",
    "dtype_from_proto",
    "finish_from_proto",
    "finish_to_proto",
    "from_proto",
    "to_proto",
]
