"""Denial of service before authentication, for real: half-open calls, garbage, leaks.

A half-open call sends its headers and never its request message. About 130 of them, without
a token, once held every slot of a replica until their deadlines ran out — health checks
included. These tests repeat that against a real server on 127.0.0.1 and check that an
authenticated Decode and a health check still answer promptly.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from cloud_helpers import collect, request, rpc_error, stub
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.v1 import decoder_pb2_grpc

TOKEN = "tok-a-0123456789abcdef"
OTHER = "tok-b-0123456789abcdef"
BEARER = (("authorization", f"Bearer {TOKEN}"),)
PROMPT_S = 1.0
"""What "promptly" means here: the attack's calls stay open for 30 s."""


class HalfOpen:
    """``count`` calls of ``method`` over ``connections`` separate connections that send
    headers (and ``metadata``) but never a request message."""

    def __init__(self, port, method, count, connections=5, metadata=()):
        self._gate = threading.Event()
        self.channels = [
            grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(connections)
        ]

        def silence():
            self._gate.wait()
            yield from ()

        self.calls = []
        for i in range(count):
            open_call = self.channels[i % connections].stream_stream(
                method,
                request_serializer=lambda m: m,
                response_deserializer=lambda b: b,
            )
            self.calls.append(open_call(silence(), timeout=30, metadata=metadata))

    def codes(self, wait_s=5.0):
        """Status of each call (None while it is still open after ``wait_s``)."""
        end = time.monotonic() + wait_s
        codes = []
        for call in self.calls:
            while call.running() and time.monotonic() < end:
                time.sleep(0.01)
            codes.append(None if call.running() else call.code())
        return codes

    def close(self):
        self._gate.set()
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


def _check_health(port, timeout=5):
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        t0 = time.monotonic()
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
        return reply.status, time.monotonic() - t0


def _decode_time(port, model, metadata=None):
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        t0 = time.monotonic()
        ids, final = collect(
            decoder_pb2_grpc.DecoderStub(channel),
            request(model, [5, 6, 1], max_new_tokens=4),
            timeout=10,
            metadata=metadata,
        )
        return final, time.monotonic() - t0


@pytest.fixture
def token_server(serve):
    return serve(
        auth={"tokens_env": "T"},
        environ={"T": f"phone-a={TOKEN}"},
        scheduler={"max_batch": 4, "max_queue": 4},
        limits={"first_message_timeout_s": 30.0},
    )


def test_half_open_calls_without_a_token_hold_nothing(token_server, model):
    attack = HalfOpen(token_server.port, "/tandem.v1.Decoder/Decode", 130)
    try:
        final, decode_s = _decode_time(token_server.port, model, BEARER)
        status, health_s = _check_health(token_server.port)
        assert final.token_count > 0 and decode_s < PROMPT_S, decode_s
        assert status == health_pb2.HealthCheckResponse.SERVING and health_s < PROMPT_S
        # Every attacking call was answered at once, before its request was read.
        assert set(attack.codes()) == {grpc.StatusCode.UNAUTHENTICATED}
    finally:
        attack.close()


def test_half_open_calls_cannot_starve_complete_ones_without_auth(serve, model):
    """On loopback without auth anyone may call; silent calls then hold places, but the
    oldest gives way to a new call, and complete calls never wait behind them."""
    server = serve(
        scheduler={"max_batch": 2, "max_queue": 2},
        limits={"first_message_timeout_s": 30.0, "max_waiting_calls": 16},
    )
    decode = HalfOpen(server.port, "/tandem.v1.Decoder/Decode", 130)
    health = HalfOpen(server.port, "/grpc.health.v1.Health/Check", 130)
    try:
        for _ in range(3):
            final, decode_s = _decode_time(server.port, model)
            status, health_s = _check_health(server.port)
            assert final.token_count > 0 and decode_s < PROMPT_S, decode_s
            assert status == health_pb2.HealthCheckResponse.SERVING and health_s < PROMPT_S
        assert server._admissions[0].load("decode")[0] <= 16  # the waiting bound holds
    finally:
        decode.close()
        health.close()


def test_a_silent_call_is_cancelled_after_the_first_message_deadline(serve, model):
    server = serve(limits={"first_message_timeout_s": 0.3})
    attack = HalfOpen(server.port, "/tandem.v1.Decoder/Decode", 10, connections=1)
    try:
        t0 = time.monotonic()
        codes = attack.codes(wait_s=5.0)
        assert set(codes) == {grpc.StatusCode.CANCELLED}
        assert time.monotonic() - t0 < 2.0
        assert server._admissions[0].load("decode") == (0, 0)
    finally:
        attack.close()
    final, _ = _decode_time(server.port, model)
    assert final.token_count > 0


def test_garbage_without_a_token_is_unauthenticated(token_server):
    """Authentication comes before parsing: bytes that are no DecodeRequest, sent without a
    token, say UNAUTHENTICATED (they once said INVALID_ARGUMENT)."""
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        raw = channel.unary_stream(
            "/tandem.v1.Decoder/Decode",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        exc = rpc_error(lambda: raw(b"\xff\xff\xff\xff garbage", timeout=5))
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        listing = channel.unary_unary(
            "/tandem.v1.Decoder/ListModels",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        exc = rpc_error(lambda: listing(b"\x00", timeout=5))
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_needs_a_token_when_auth_is_on(token_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        exc = rpc_error(lambda: list(reflect.ServerReflectionInfo(iter([ask]), timeout=5)))
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(reflect.ServerReflectionInfo(iter([ask]), timeout=5, metadata=BEARER))
        names = {s.name for s in answers[0].list_services_response.service}
        assert "tandem.v1.Decoder" in names


def test_an_unknown_model_lists_only_models_the_caller_may_use(serve, model):
    server = serve(
        auth={"tokens_env": "T"},
        environ={"T": f"phone-a={TOKEN}"},
    )
    req = request(model, [5, 6, 1])
    req.model_fingerprint = "sha256:" + "0" * 64
    exc = rpc_error(lambda: list(stub(server).Decode(req, timeout=5, metadata=BEARER)))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert model.fingerprint in exc.details()  # phone-a may use every model


def test_an_unknown_model_hides_models_outside_the_token(serve, model, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"phone-b:\n  token: {OTHER}\n  models: ['sha256:{'1' * 64}']\n", encoding="utf-8"
    )
    server = serve(auth={"tokens_file": str(tokens)})
    req = request(model, [5, 6, 1])
    req.model_fingerprint = "sha256:" + "0" * 64
    bearer = (("authorization", f"Bearer {OTHER}"),)
    exc = rpc_error(lambda: list(stub(server).Decode(req, timeout=5, metadata=bearer)))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert model.fingerprint not in exc.details() and model.manifest.name not in exc.details()
