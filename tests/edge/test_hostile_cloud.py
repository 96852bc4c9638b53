"""A misbehaving cloud behind a real agent: whatever it streams, the app gets the right answer.

The fake cloud is a real gRPC server on 127.0.0.1 implementing tandem.v1.Decoder; it streams a
correct prefix of the answer (computed by the real model) and then something the contract
forbids. The agent must notice (``CloudViolation``), count it, feed the breaker, and finish
locally from the valid prefix, so the output equals the all-local reference.
"""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.edge.agent import Outcome, Piece, Request
from tandem.edge.breaker import BreakerState
from tandem.edge.client import EdgeClient
from tandem.edge.server import create_edge_server
from tandem.runtime.seq2seq import Seq2Seq
from tandem.v1 import decoder_pb2, decoder_pb2_grpc

TEXT = "w7 w8 w9 w20 w33"
EOS_FINAL = decoder_pb2.FINISH_REASON_EOS
LENGTH_FINAL = decoder_pb2.FINISH_REASON_LENGTH


def chunk(start: int, ids) -> decoder_pb2.DecodeEvent:
    return decoder_pb2.DecodeEvent(tokens=decoder_pb2.TokenChunk(start=start, ids=list(ids)))


def final(reason: int, count: int) -> decoder_pb2.DecodeEvent:
    return decoder_pb2.DecodeEvent(
        final=decoder_pb2.DecodeFinal(reason=reason, token_count=count, replica_id="fake-1")
    )


class FakeDecoder(decoder_pb2_grpc.DecoderServicer):
    """Streams whatever ``script(request)`` returns; counts the calls it got."""

    def __init__(self) -> None:
        self.script = lambda request: []
        self.calls = 0

    def Decode(self, request, context):
        self.calls += 1
        context.send_initial_metadata((("tandem-replica-id", "fake-1"),))
        yield from self.script(request)


@pytest.fixture(scope="module")
def fake_cloud():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    fake = FakeDecoder()
    decoder_pb2_grpc.add_DecoderServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, port
    server.stop(None)


@pytest.fixture(scope="module")
def reference(text_bundle):
    """The all-local answer (EOS excluded) for ``max_new_tokens`` (None: the model's limit)."""
    model = Seq2Seq.load(text_bundle)
    cache = {}

    def answer(max_new_tokens=None) -> list[int]:
        if max_new_tokens not in cache:
            out = model.generate(TEXT, target="fr", max_new_tokens=max_new_tokens)
            cache[max_new_tokens] = [t for t in out.ids if t != model.manifest.tokens.eos]
        return cache[max_new_tokens]

    answer.vocab = model.manifest.dims.vocab_size
    answer.eos = model.manifest.tokens.eos
    return answer


def run(agent, max_new_tokens=None) -> tuple[list[int], Outcome]:
    ids, outcome = [], None
    for item in agent.generate(Request(text=TEXT, target="fr", max_new_tokens=max_new_tokens)):
        if isinstance(item, Piece):
            ids += item.ids
        else:
            outcome = item
    return ids, outcome


def hostile_scripts(ref, vocab, eos):
    """name -> (script, violation reason); each starts with a correct prefix of the answer."""
    k = 2
    good = ref[:k]
    n = len(ref)
    return {
        "minus_one": ([chunk(0, good), chunk(k, [-1])], "token_out_of_vocab"),
        "id_is_vocab_size": ([chunk(0, good + [vocab])], "token_out_of_vocab"),
        "huge_id": ([chunk(0, good), chunk(k, [2**62])], "token_out_of_vocab"),
        "eos_inside": ([chunk(0, good + [eos] + ref[k:])], "eos_in_stream"),
        "wrong_start": ([chunk(0, good), chunk(k + 1, ref[k:])], "chunk_start"),
        "empty_chunk": ([chunk(0, good), chunk(k, [])], "empty_chunk"),
        "wrong_first_token": ([chunk(0, [ref[1]] + ref[1:])], "forced_first_token"),
        "final_count_lies": ([chunk(0, good), final(EOS_FINAL, n)], "final_token_count"),
        "final_unspecified": ([chunk(0, ref), final(0, n)], "final_reason"),
        "length_too_early": ([chunk(0, good), final(LENGTH_FINAL, k)], "final_length"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "minus_one",
        "id_is_vocab_size",
        "huge_id",
        "eos_inside",
        "wrong_start",
        "empty_chunk",
        "wrong_first_token",
        "final_count_lies",
        "final_unspecified",
        "length_too_early",
    ],
)
def test_each_violation_resumes_locally_with_the_right_answer(
    name, fake_cloud, agent_factory, reference
):
    fake, port = fake_cloud
    ref = reference()
    assert len(ref) >= 4, "need an answer long enough to cut"
    script, violation = hostile_scripts(ref, reference.vocab, reference.eos)[name]
    fake.script = lambda request: iter(script)
    agent = agent_factory(port, policy="always_cloud", failure_threshold=1, reset_timeout_s=60)
    streamed, outcome = run(agent)
    assert outcome.ids == ref and streamed == ref
    assert outcome.fallbacks == ["cloud_violation"]
    assert agent.metrics.counts[f"violation:{violation}"] == 1
    assert agent.breaker.state(time.monotonic()) is BreakerState.OPEN  # fed to the breaker


def test_a_hundred_thousand_tokens_never_reach_the_app(fake_cloud, agent_factory, reference):
    """The app asked for at most 3 tokens; the cloud streams 100,001: it gets exactly 3."""
    fake, port = fake_cloud
    ref = reference(3)
    assert len(ref) == 3, "the answer must be cut by the limit for this check"

    def flood(request):
        yield chunk(0, ref)
        start = 3
        while start < 100_001:
            yield chunk(start, [5] * 1000)
            start += 1000

    fake.script = flood
    agent = agent_factory(port, policy="always_cloud")
    streamed, outcome = run(agent, max_new_tokens=3)
    assert outcome.ids == ref == streamed
    assert agent.metrics.counts["violation:too_many_tokens"] == 1


def test_an_out_of_vocabulary_id_is_not_the_apps_invalid_argument(
    fake_cloud, agent_factory, reference, tmp_path
):
    """Through the real local API: -1 from the cloud once gave the app UNKNOWN, and a stream
    cut after an out-of-vocabulary id gave it INVALID_ARGUMENT; now it gets the answer."""
    fake, port = fake_cloud
    ref = reference()

    def cut_after_bad_id(request):
        yield chunk(0, ref[:2] + [reference.vocab + 7])
        raise RuntimeError("replica crashed")  # the stream ends with an error status

    fake.script = cut_after_bad_id
    agent = agent_factory(port, policy="always_cloud")
    server, where = create_edge_server(agent)
    try:
        with EdgeClient(where["socket"]) as client:
            answer = client.ask(TEXT, target="fr")
        assert list(answer.ids) == ref
        assert list(answer.fallbacks) == ["cloud_violation"]
    finally:
        server.stop(None)


_tail = st.one_of(
    st.tuples(st.just("bad_id"), st.sampled_from([-1, -(2**40), 96, 97, 10**6, 2**62])),
    st.tuples(st.just("eos"), st.just(0)),
    st.tuples(st.just("bad_start"), st.integers(-3, 3).filter(bool)),
    st.tuples(st.just("empty"), st.just(0)),
    st.tuples(st.just("cut"), st.just(0)),
    st.tuples(st.just("final_count"), st.integers(-3, 3).filter(bool)),
    st.tuples(st.just("final_reason"), st.sampled_from([0, 5, 99])),
    st.tuples(st.just("complete"), st.just(0)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_whatever_the_cloud_streams_the_app_gets_the_local_answer(
    data, fake_cloud, agent_factory, reference
):
    """Invariant: a correct prefix of any length, cut into chunks of any size, followed by any
    detectable violation (or a correct end) gives exactly the all-local answer, streamed
    contiguously. (A well-formed but wrong token is out of reach: see edge/stream_check.py.)"""
    fake, port = fake_cloud
    ref = reference()
    vocab, eos = reference.vocab, reference.eos
    k = data.draw(st.integers(0, len(ref)), label="valid prefix length")
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=0, max_size=len(ref)), label="chunks")
    kind, value = data.draw(_tail, label="tail")
    events, start = [], 0
    for size in sizes:
        if start >= k:
            break
        events.append(chunk(start, ref[start : min(k, start + size)]))
        start = min(k, start + size)
    if start < k:
        events.append(chunk(start, ref[start:k]))
    if kind == "bad_id":
        events.append(chunk(k, [value if value != 96 else vocab]))
    elif kind == "eos":
        events.append(chunk(k, [eos]))
    elif kind == "bad_start":
        events.append(chunk(max(0, k + value), ref[k:] or [5]))
    elif kind == "empty":
        events.append(chunk(k, []))
    elif kind == "final_count":
        events.append(final(EOS_FINAL, k + abs(value)))
    elif kind == "final_reason":
        events.append(final(value, k))
    elif kind == "complete":
        if k < len(ref):
            events.append(chunk(k, ref[k:]))
        events.append(final(EOS_FINAL, len(ref)))
    fake.script = lambda request: iter(events)
    agent = getattr(agent_factory, "hostile_agent", None)
    if agent is None:  # one agent per hypothesis run: building one per example dominates
        agent = agent_factory.hostile_agent = agent_factory(
            port, policy="always_cloud", failure_threshold=10**6
        )
    streamed, outcome = run(agent)
    assert outcome.ids == ref and streamed == ref
