"""Client-side helpers for the cloud tests: requests, stream collection with contract checks."""

from __future__ import annotations

import uuid

import grpc

from tandem.cloud.config import parse_cloud_config
from tandem.cloud.server import CloudServer, create_server
from tandem.runtime import codec
from tandem.runtime.decoding import GenerationParams
from tandem.v1 import decoder_pb2, decoder_pb2_grpc
from tandem.wire import build_decode_request


def start_server(models, environ=None, **config) -> CloudServer:
    config.setdefault("listen", "127.0.0.1:0")
    server, _ = create_server(parse_cloud_config(config), environ=environ or {}, models=models)
    server.start()
    return server


def stub(server_or_address, channel_options=()) -> decoder_pb2_grpc.DecoderStub:
    address = (
        server_or_address
        if isinstance(server_or_address, str)
        else f"127.0.0.1:{server_or_address.port}"
    )
    return decoder_pb2_grpc.DecoderStub(
        grpc.insecure_channel(address, options=list(channel_options))
    )


def request(
    model,
    source: list[int],
    *,
    spec: str = "fp32",
    pad_rows: int = 0,
    request_id: str | None = None,
    **params,
) -> decoder_pb2.DecodeRequest:
    """A DecodeRequest for ``source`` encoded by ``model`` (padded by ``pad_rows`` zero rows)."""
    import numpy as np

    hidden = model.encode(source)  # (S, D)
    if pad_rows:
        hidden = np.concatenate([hidden, np.zeros((pad_rows, hidden.shape[1]), np.float32)])
    c, comp = codec.parse_codec_spec(spec)
    return build_decode_request(
        request_id=request_id or str(uuid.uuid4()),
        model_fingerprint=model.fingerprint,
        hidden_states=codec.encode(hidden, c, comp),
        source_length=len(source),
        **params,
    )


def collect(stub_, req, timeout=20.0, metadata=None) -> tuple[list[int], decoder_pb2.DecodeFinal]:
    """All streamed ids and the final event, checking the stream contract on the way."""
    ids: list[int] = []
    final = None
    expected_start = len(req.prefix)
    for event in stub_.Decode(req, timeout=timeout, metadata=metadata):
        assert final is None, "nothing may follow the final event"
        kind = event.WhichOneof("event")
        if kind == "tokens":
            assert event.tokens.start == expected_start, "chunks must be contiguous"
            assert len(event.tokens.ids) > 0, "chunks are never empty"
            ids += event.tokens.ids
            expected_start += len(event.tokens.ids)
        else:
            final = event.final
    assert final is not None, "the stream must end with exactly one final event"
    assert final.token_count == expected_start
    return ids, final


def expected_ids(
    model,
    source,
    *,
    max_new_tokens=0,
    min_new_tokens=0,
    forced_first_token=None,
    prefix=(),
    eos_token_id=None,
) -> tuple[list[int], str]:
    """What the local runtime generates, as the cloud must stream it (no prefix, no EOS)."""
    params = GenerationParams(
        max_new_tokens=max_new_tokens or None,
        min_new_tokens=min_new_tokens,
        forced_first_token=forced_first_token,
        eos_token_id=eos_token_id,
        prefix=tuple(prefix),
    )
    gen = model.decode(model.encode(source), params)
    ids = gen.ids[len(prefix) :]
    eos = eos_token_id if eos_token_id is not None else model.manifest.tokens.eos
    if gen.finish == "eos":
        assert ids[-1] == eos
        ids = ids[:-1]
    return ids, gen.finish


def rpc_error(call) -> grpc.RpcError:
    """Run ``call`` (a zero-argument function making a call) and return its RpcError."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded; expected an error status")


def trailers(exc: grpc.RpcError) -> dict[str, str]:
    return dict(exc.trailing_metadata() or ())
