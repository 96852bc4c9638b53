"""Property: no DecodeRequest, however malformed, yields INTERNAL or harms the server.

Invariant: every request ends either in a well-formed stream (contiguous chunks, one final,
token_count consistent) or in INVALID_ARGUMENT / FAILED_PRECONDITION — the client's fault,
named — and the replica keeps serving. Two input spaces: structured requests (every field
arbitrary, alone and in combination) and raw bytes as the serialized request (arbitrary, or a
valid request with bytes flipped, cut or inserted), which reach gRPC's parser first.
"""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
from cloud_helpers import collect, request, stub
from fuzzing import mutated
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.runtime import codec
from tandem.v1 import decoder_pb2
from tandem.wire import to_proto

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
ENUM = st.integers(-1, 5)


def small_or(strategy, low=0, high=80):
    return st.one_of(st.integers(low, high), strategy)


@st.composite
def arbitrary_tensors(draw):
    return decoder_pb2.Tensor(
        dtype=draw(ENUM),
        shape=draw(st.lists(small_or(INT64, -2, 70), max_size=3)),
        codec=draw(ENUM),
        scales=draw(st.binary(max_size=300)),
        compression=draw(ENUM),
        data=draw(st.binary(max_size=3000)),
    )


BREAKABLE = (
    "request_id", "model_fingerprint", "hidden_states", "shape", "data", "enums", "scales",
    "values", "source_length", "max_new_tokens", "min_new_tokens", "forced_first_token",
    "target_language", "eos_token_id", "prefix",
)  # fmt: skip


@st.composite
def decode_requests(draw, model):
    """A coherent valid request with up to three fields replaced by arbitrary values, so every
    check (and the decoding path behind them) is reached, alone and in combination."""
    dims = model.manifest.dims
    limit = dims.max_target_length - 1
    eos = model.manifest.tokens.eos
    token = st.integers(0, dims.vocab_size - 1).filter(lambda t: t != eos)

    prefix = draw(st.lists(token, max_size=4))
    forced = draw(st.one_of(st.none(), token))
    if forced is not None and prefix:
        prefix[0] = forced
    max_new = draw(st.integers(0, limit))
    if max_new:
        max_new = max(max_new, len(prefix), 1)
    rows = draw(st.integers(1, dims.max_source_length))
    values = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(
        size=(rows, dims.hidden_size)
    )
    spec = draw(st.sampled_from(codec.CODEC_SPECS))
    req = decoder_pb2.DecodeRequest(
        request_id=str(draw(st.uuids())),
        model_fingerprint=model.fingerprint,
        hidden_states=to_proto(
            codec.encode(values.astype(np.float32), *codec.parse_codec_spec(spec))
        ),
        source_length=draw(st.integers(1, rows)),
        prefix=prefix,
    )
    params = req.params
    params.max_new_tokens = max_new
    params.min_new_tokens = draw(st.integers(0, min(3, max_new or limit)))
    if forced is not None:
        params.forced_first_token = forced

    tensor = req.hidden_states
    broken = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
    for name in draw(
        st.lists(st.sampled_from(BREAKABLE), min_size=broken, max_size=broken, unique=True)
    ):
        if name == "request_id":
            req.request_id = draw(st.text(max_size=140))
        elif name == "model_fingerprint":
            req.model_fingerprint = draw(st.text(max_size=80))
        elif name == "hidden_states":
            if draw(st.booleans()):
                req.ClearField("hidden_states")
            else:
                tensor.CopyFrom(draw(arbitrary_tensors()))
        elif name == "shape":
            value = draw(small_or(INT64, -1, 70))
            if len(tensor.shape) == 2:
                tensor.shape[draw(st.integers(0, 1))] = value
            else:  # an arbitrary tensor drawn above may have fewer dimensions
                tensor.shape.append(value)
        elif name == "data":
            tensor.data = draw(st.binary(max_size=3000))
        elif name == "enums":
            setattr(tensor, draw(st.sampled_from(["dtype", "codec", "compression"])), draw(ENUM))
        elif name == "scales":
            tensor.scales = draw(st.binary(max_size=300))
        elif name == "values":  # raw non-finite or huge values behind a valid header
            bad = np.full(
                (rows, dims.hidden_size),
                draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38])),
                np.float32,
            )
            tensor.CopyFrom(
                decoder_pb2.Tensor(
                    dtype=decoder_pb2.DTYPE_FLOAT32,
                    shape=[rows, dims.hidden_size],
                    codec=decoder_pb2.CODEC_FP32,
                    compression=decoder_pb2.COMPRESSION_NONE,
                    data=bad.tobytes(),
                )
            )
        elif name == "source_length":
            req.source_length = draw(small_or(UINT32))
        elif name == "max_new_tokens":
            params.max_new_tokens = draw(small_or(UINT32))
        elif name == "min_new_tokens":
            params.min_new_tokens = draw(small_or(UINT32))
        elif name == "forced_first_token":
            params.forced_first_token = draw(small_or(INT64, -1, dims.vocab_size + 1))
        elif name == "target_language":
            params.target_language = draw(st.text(max_size=10))
        elif name == "eos_token_id":
            params.eos_token_id = draw(small_or(INT64, -1, dims.vocab_size + 1))
        elif name == "prefix":
            del req.prefix[:]
            req.prefix.extend(draw(st.lists(small_or(INT64, -1, dims.vocab_size + 1), max_size=70)))
    return req


ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


def test_arbitrary_requests_never_yield_internal(shared_server, model):
    client = stub(shared_server)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(decode_requests(model))
    def check(req):
        try:
            collect(client, req, timeout=20)
        except grpc.RpcError as exc:
            assert exc.code() in ALLOWED, (exc.code(), exc.details())
            assert exc.details()

    check()
    ids, final = collect(client, request(model, [5, 6, 1], max_new_tokens=4))
    assert final.token_count == len(ids)
    load = next(iter(shared_server.engines.values())).load
    assert load == (0, 0)


# -- raw bytes: what gRPC hands the server before any field exists -----------------------------


def raw_decode(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return channel.unary_stream("/tandem.v1.Decoder/Decode")  # bytes in, bytes out


def test_raw_bytes_never_yield_internal(shared_server, model):
    """Invariant: any bytes as the serialized DecodeRequest end in INVALID_ARGUMENT or
    FAILED_PRECONDITION (or in a stream, when the bytes happen to parse into a valid request).
    gRPC's own parser used to answer INTERNAL here (see ``tandem.rpc``)."""
    decode = raw_decode(shared_server)
    list_models = grpc.insecure_channel(f"127.0.0.1:{shared_server.port}").unary_unary(
        "/tandem.v1.Decoder/ListModels"
    )

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=400), mutated(decode_requests(model))))
    def check(data):
        try:
            for chunk in decode(data, timeout=20):
                decoder_pb2.DecodeEvent.FromString(chunk)  # well-formed replies only
        except grpc.RpcError as exc:
            assert exc.code() in ALLOWED, (exc.code(), exc.details())
            assert exc.details()
        try:
            decoder_pb2.ListModelsResponse.FromString(list_models(data[:64], timeout=5))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())

    check()
    with pytest.raises(grpc.RpcError) as info:
        list(decode(b"\xff\xff\xff", timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid tandem.v1.DecodeRequest" in info.value.details()
    # Still healthy and still right: a valid request after the storm decodes as before.
    ids, final = collect(stub(shared_server), request(model, [5, 6, 1], max_new_tokens=4))
    assert final.token_count == len(ids)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{shared_server.port}"))
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert next(iter(shared_server.engines.values())).load == (0, 0)


# -- Handoff: the same checks, a prefix that comes later, and raw bytes in either message ------


def handoff_events(client, first: bytes, second: bytes | None, timeout: float = 20.0):
    """Raw Handoff: ``first`` at once, ``second`` when the replica acknowledges (None: a
    half-close instead); returns the parsed replies, or raises the call's RpcError."""
    outbox = _Outbox(first)
    replies = []
    try:
        for chunk in client(outbox, timeout=timeout):
            event = decoder_pb2.HandoffEvent.FromString(chunk)  # well-formed replies only
            replies.append(event)
            if event.WhichOneof("event") == "accepted":
                outbox.send(second)
    finally:
        outbox.send(None)
    return replies


class _Outbox:
    """A request iterator: ``first``, then what ``send`` gives (None ends it)."""

    def __init__(self, first: bytes) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queue.put(first)

    def send(self, item: bytes | None) -> None:
        self._queue.put(item)

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        item = self._queue.get()
        if item is None:
            self._queue.put(None)
            raise StopIteration
        return item


def test_arbitrary_handoffs_never_yield_internal(shared_server, model):
    """Invariant: whatever the start and the prefix (structured or raw bytes), a Handoff ends
    in a well-formed stream or INVALID_ARGUMENT / FAILED_PRECONDITION, never INTERNAL; the
    replica holds nothing afterwards."""
    raw = grpc.insecure_channel(f"127.0.0.1:{shared_server.port}").stream_stream(
        "/tandem.v1.Decoder/Handoff"
    )
    vocab = model.manifest.dims.vocab_size
    prefixes = st.lists(small_or(INT64, -1, vocab + 1), max_size=8).map(
        lambda ids: decoder_pb2.HandoffRequest(
            prefix=decoder_pb2.HandoffPrefix(ids=ids)
        ).SerializeToString()
    )
    starts = decode_requests(model).map(
        lambda req: decoder_pb2.HandoffRequest(start=req).SerializeToString()
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(starts, st.binary(max_size=200)),
        st.one_of(prefixes, st.binary(max_size=40), st.none()),
    )
    def check(first, second):
        try:
            handoff_events(raw, first, second)
        except grpc.RpcError as exc:
            assert exc.code() in ALLOWED, (exc.code(), exc.details())
            assert exc.details()

    check()
    assert next(iter(shared_server.engines.values())).load == (0, 0)
