"""Decoder.Handoff against a real server: continuing from the device's prefix, and its checks.

A Handoff is a Decode whose prefix arrives after the hidden states: the replica acknowledges
the upload, the device answers with the tokens it has, and the replica streams the rest. Every
rule of Decode holds for it, plus the ones of its own two-message protocol.
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest
from cloud_helpers import collect, expected_ids, request, rpc_error, stub

from tandem.v1 import decoder_pb2

SOURCE = [5, 6, 7, 8, 1]
TOKEN_A = "tok-a-0123456789abcdef"
TOKEN_B = "tok-b-0123456789abcdef"


class Handoff:
    """A client's side of one Handoff call: ``start`` at once, the prefix when ``answer()``."""

    def __init__(self, stub_, start, *, timeout=20.0, metadata=None, first=None) -> None:
        self.outbox: queue.Queue = queue.Queue()
        self.first = first if first is not None else decoder_pb2.HandoffRequest(start=start)
        self.call = stub_.Handoff(self._requests(), timeout=timeout, metadata=metadata)

    def _requests(self):
        yield self.first
        while True:
            item = self.outbox.get()
            if item is None:
                return
            yield item

    def send_prefix(self, ids) -> None:
        self.outbox.put(decoder_pb2.HandoffRequest(prefix=decoder_pb2.HandoffPrefix(ids=ids)))

    def close(self) -> None:
        self.outbox.put(None)


def handoff(
    stub_, start, prefix, chunks: list[int] | None = None, **kwargs
) -> tuple[list[int], decoder_pb2.DecodeFinal]:
    """Every token after ``prefix`` and the final event, checking the stream contract;
    ``chunks``, if given, gets the length of each token chunk."""
    h = Handoff(stub_, start, **kwargs)
    ids: list[int] = []
    final = None
    accepted = 0
    expected_start = len(prefix)
    try:
        for event in h.call:
            assert final is None, "nothing may follow the final event"
            kind = event.WhichOneof("event")
            if kind == "accepted":
                assert accepted == 0 and not ids, "accepted comes once, first"
                accepted += 1
                h.send_prefix(prefix)
                h.close()
            elif kind == "tokens":
                assert accepted == 1, "no token before the prefix"
                assert event.tokens.start == expected_start and event.tokens.ids
                ids += event.tokens.ids
                expected_start += len(event.tokens.ids)
                if chunks is not None:
                    chunks.append(len(event.tokens.ids))
            else:
                final = event.final
    finally:
        h.close()
    assert final is not None and final.token_count == expected_start
    return ids, final


def error_of(h: Handoff, on_accepted=None) -> grpc.RpcError:
    try:
        for event in h.call:
            if event.WhichOneof("event") == "accepted" and on_accepted is not None:
                on_accepted(h)
    except grpc.RpcError as exc:
        return exc
    finally:
        h.close()
    raise AssertionError("the Handoff succeeded; expected an error status")


@pytest.mark.parametrize("cut", [0, 1, 3, 6])
def test_handoff_continues_from_the_prefix_exactly(shared_server, model, cut):
    """Whatever the device had when the upload landed, the whole answer is a local decode's."""
    want, finish = expected_ids(model, SOURCE, max_new_tokens=12)
    assert len(want) > 6
    ids, final = handoff(stub(shared_server), request(model, SOURCE, max_new_tokens=12), want[:cut])
    assert want[:cut] + ids == want
    assert final.token_count == len(want)
    assert final.reason == (
        decoder_pb2.FINISH_REASON_EOS if finish == "eos" else decoder_pb2.FINISH_REASON_LENGTH
    )


def test_forced_first_token_is_streamed_only_without_a_prefix(shared_server, model):
    want, _ = expected_ids(model, SOURCE, max_new_tokens=8, forced_first_token=9)
    client = stub(shared_server)
    start = lambda: request(model, SOURCE, max_new_tokens=8, forced_first_token=9)  # noqa: E731
    assert handoff(client, start(), [])[0] == want
    assert handoff(client, start(), want[:2])[0] == want[2:]
    exc = error_of(
        Handoff(client, start()), on_accepted=lambda h: (h.send_prefix([want[1]]), h.close())
    )
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "forced first token" in exc.details()


def test_a_full_prefix_gets_its_final_at_once(shared_server, model):
    want, _ = expected_ids(model, SOURCE, max_new_tokens=4)
    ids, final = handoff(stub(shared_server), request(model, SOURCE, max_new_tokens=4), want)
    assert ids == [] and final.reason == decoder_pb2.FINISH_REASON_LENGTH
    assert final.token_count == 4


@pytest.mark.parametrize(
    ("prefix", "words"),
    [
        ([3, 10_000], "prefix.ids[1] = 10000 is outside the vocabulary"),
        ([-1], "prefix.ids[0] = -1 is outside"),
        ([3, 1, 4], "prefix.ids[1] is the EOS token"),
        ([3] * 5, "prefix.ids has 5 tokens, more than max_new_tokens 4"),
    ],
)
def test_bad_prefixes_are_invalid_argument(shared_server, model, prefix, words):
    h = Handoff(stub(shared_server), request(model, SOURCE, max_new_tokens=4))
    exc = error_of(h, on_accepted=lambda h: (h.send_prefix(prefix), h.close()))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in exc.details()


def test_protocol_violations_are_invalid_argument(shared_server, model):
    client = stub(shared_server)
    # A prefix inside start: the prefix has its own message.
    exc = error_of(Handoff(client, request(model, SOURCE, prefix=[3])))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "start.prefix" in exc.details()
    # The prefix first.
    first = decoder_pb2.HandoffRequest(prefix=decoder_pb2.HandoffPrefix(ids=[3]))
    exc = error_of(Handoff(client, None, first=first))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "must be start" in exc.details()
    # start twice.
    again = decoder_pb2.HandoffRequest(start=request(model, SOURCE))
    exc = error_of(
        Handoff(client, request(model, SOURCE)),
        on_accepted=lambda h: (h.outbox.put(again), h.close()),
    )
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "must be prefix" in exc.details()
    # Half-closed without a prefix.
    exc = error_of(Handoff(client, request(model, SOURCE)), on_accepted=Handoff.close)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "without a prefix" in exc.details()
    # The start message is checked like a Decode request (here: its tensor).
    bad = request(model, SOURCE)
    bad.hidden_states.data = bad.hidden_states.data[:-4]
    exc = error_of(Handoff(client, bad))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "hidden_states" in exc.details()
    # A wrong model: no acknowledgement, FAILED_PRECONDITION as for Decode.
    other = request(model, SOURCE)
    other.model_fingerprint = "sha256:" + "2" * 64
    exc = error_of(Handoff(client, other))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_prefix_that_never_comes_is_cancelled_and_frees_the_client(serve, model):
    """A device that never answers the acknowledgement holds its stream slot (never a batch
    slot) for limits.handoff_prefix_timeout_s at most."""
    server = serve(limits={"handoff_prefix_timeout_s": 0.3, "max_streams_per_client": 1})
    client = stub(server)
    h = Handoff(client, request(model, SOURCE, max_new_tokens=4))
    events = iter(h.call)
    assert next(events).WhichOneof("event") == "accepted"
    # Meanwhile the client's one slot is taken: its Decode is refused, not queued.
    busy = rpc_error(lambda: client.Decode(request(model, SOURCE), timeout=5))
    assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.engines[model.fingerprint].load == (0, 0), "no batch slot while waiting"
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        next(events)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert time.monotonic() - started < 2.0
    h.close()
    collect(client, request(model, SOURCE, max_new_tokens=4))  # the slot came back
    metric = server.metrics.registry.get_sample_value
    assert metric("tandem_cloud_requests_total", {"method": "Handoff", "code": "CANCELLED"}) == 1


def test_a_start_that_never_comes_is_cancelled_by_admission(serve, model):
    server = serve(limits={"first_message_timeout_s": 0.3})
    client = stub(server)
    silent: queue.Queue = queue.Queue()

    def nothing():
        if silent.get() is not None:
            yield  # never reached
        return

    call = client.Handoff(nothing(), timeout=10)
    started = time.monotonic()
    exc = rpc_error(lambda: list(call))
    silent.put(None)
    assert exc.code() == grpc.StatusCode.CANCELLED
    assert time.monotonic() - started < 3.0
    collect(client, request(model, SOURCE, max_new_tokens=4))


def test_half_open_handoffs_starve_neither_decode_nor_other_devices(serve, model, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"phone-a: {TOKEN_A}\nphone-b: {TOKEN_B}\n", encoding="utf-8")
    server = serve(
        auth={"tokens_file": str(tokens)},
        limits={"max_streams_per_client": 3, "max_waiting_calls": 4},
    )
    client = stub(server)
    a = [("authorization", f"Bearer {TOKEN_A}")]
    b = [("authorization", f"Bearer {TOKEN_B}")]
    # Without a token: refused before anything is read.
    exc = error_of(Handoff(client, request(model, SOURCE)))
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    # phone-a: three acknowledged Handoffs that never send their prefix, and silent ones.
    held = [Handoff(client, request(model, SOURCE), metadata=a) for _ in range(3)]
    for h in held:
        assert next(iter(h.call)).WhichOneof("event") == "accepted"
    blocked = queue.Queue()

    def silent():
        blocked.get()
        return
        yield

    mute = [client.Handoff(silent(), timeout=10, metadata=a) for _ in range(8)]
    exc = error_of(Handoff(client, request(model, SOURCE), metadata=a))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # its own limit, nobody else's
    # phone-b is served, by Decode and by Handoff.
    want, _ = expected_ids(model, SOURCE, max_new_tokens=6)
    assert collect(client, request(model, SOURCE, max_new_tokens=6), metadata=b)[0] == want
    ids, _ = handoff(client, request(model, SOURCE, max_new_tokens=6), want[:2], metadata=b)
    assert want[:2] + ids == want
    for h in held:
        h.call.cancel()
        h.close()
    for call in mute:
        call.cancel()
    for _ in mute:
        blocked.put(None)


def test_cancelling_mid_stream_frees_the_batch_slot(serve, long_model):
    server = serve(models=[long_model])
    client = stub(server)
    h = Handoff(client, request(long_model, SOURCE, min_new_tokens=800, max_new_tokens=1000))
    got = threading.Event()
    for event in h.call:
        kind = event.WhichOneof("event")
        if kind == "accepted":
            h.send_prefix([])
            h.close()
        elif kind == "tokens":
            got.set()
            break
    assert got.is_set()
    h.call.cancel()
    engine = server.engines[long_model.fingerprint]
    deadline = time.monotonic() + 5
    while engine.load != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.load == (0, 0)


def test_handoff_metrics(serve, model):
    server = serve()
    want, _ = expected_ids(model, SOURCE, max_new_tokens=8)
    handoff(stub(server), request(model, SOURCE, max_new_tokens=8), want[:3])
    metric = server.metrics.registry.get_sample_value
    assert metric("tandem_cloud_requests_total", {"method": "Handoff", "code": "OK"}) == 1
    labels = {"model": model.manifest.name}
    assert metric("tandem_cloud_handoff_prefix_tokens_sum", labels) == 3
    assert metric("tandem_cloud_handoff_prefix_wait_seconds_count", labels) == 1
    assert metric("tandem_cloud_tokens_total", labels) == len(want) - 3


def test_a_handoff_is_held_no_longer_than_the_interval_however_busy(serve, long_model):
    """Pacing that holds a Decode stream to its first chunk and its last leaves a Handoff's
    chunks at ``stream_interval_ms``: the device stops decoding once the cloud passes it."""
    paced = {"stream_interval_ms": 1, "stream_cpu_share": 1e-6, "stream_interval_max_ms": 60_000}
    client = stub(serve(models=[long_model], scheduler=paced))
    start = request(long_model, SOURCE, min_new_tokens=600, max_new_tokens=600)
    decode_chunks = sum(
        1 for e in client.Decode(start, timeout=20) if e.WhichOneof("event") == "tokens"
    )
    chunks: list[int] = []
    ids, _ = handoff(client, start, [], chunks)
    assert len(ids) == 600
    assert decode_chunks <= 2 and len(chunks) > 10
