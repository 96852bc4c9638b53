"""Property: no GenerateRequest, however malformed, crashes the agent or yields INTERNAL.

Invariant: every call to the local API ends either in a well-formed stream — pieces contiguous
from index 0, exactly one final event, last, whose ids are the pieces' ids and equal an
all-local greedy decode of the same input — or in INVALID_ARGUMENT naming the problem. A request
the agent accepts is one the cloud accepts too (no ``cloud_rejected`` fallback: an app's bad
field must not count as a cloud failure and open the breaker for everyone). The agent keeps
serving afterwards. Inputs: structured (every field arbitrary) and raw bytes as the serialized
request (arbitrary, or a valid request with bytes flipped, cut or inserted).

The agent runs with a real cloud replica and ``always_cloud``, so accepted requests cross the
agent, the wire and the cloud; ``local_only`` draws cover the local path.
"""

from __future__ import annotations

import grpc
import pytest
from fuzzing import mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.edge.server import MAX_DEADLINE_MS, create_edge_server
from tandem.runtime.seq2seq import Seq2Seq
from tandem.v1 import decoder_pb2, edge_pb2

UINT32 = st.integers(0, 2**32 - 1)
WORDS = st.lists(st.integers(0, 120).map(lambda i: f"w{i}"), min_size=1, max_size=12).map(" ".join)


def small_or(strategy, low=0, high=80):
    return st.one_of(st.integers(low, high), strategy)


@st.composite
def generate_requests(draw) -> edge_pb2.GenerateRequest:
    """Mostly plausible requests (in-vocabulary words, known languages), each field replaced by
    an arbitrary value with some probability, so both the checks and the decoding are reached."""
    return edge_pb2.GenerateRequest(
        request_id=draw(st.one_of(st.just(""), st.uuids().map(str), st.text(max_size=140))),
        text=draw(st.one_of(WORDS, WORDS, st.text(max_size=300))),
        target_language=draw(st.one_of(st.sampled_from(["fr", "en", ""]), st.text(max_size=8))),
        max_new_tokens=draw(st.one_of(st.just(0), small_or(UINT32, 1, 70))),
        local_only=draw(st.booleans()),
        deadline_ms=draw(
            st.one_of(st.just(0), st.integers(1, 30_000), st.integers(MAX_DEADLINE_MS, 2**32 - 1))
        ),
    )


@pytest.fixture(scope="module")
def reference(text_bundle):
    return Seq2Seq.load(text_bundle)


@pytest.fixture
def served(cloud_factory, agent_factory):
    _, port = cloud_factory()
    agent = agent_factory(port, policy="always_cloud")
    server, where = create_edge_server(agent)
    channel = grpc.insecure_channel(f"unix:{where['socket']}")
    yield agent, channel
    channel.close()
    server.stop(None)


def check_stream(events: list[edge_pb2.GenerateEvent], reference: Seq2Seq, request) -> None:
    """The stream contract of edge.proto, and the answer an all-local decode gives."""
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds and kinds[-1] == "final" and kinds.count("final") == 1, kinds
    ids: list[int] = []
    for event in events[:-1]:
        assert event.piece.start == len(ids), "pieces are contiguous from 0"
        ids += event.piece.ids
    final = events[-1].final
    assert list(final.ids) == ids and final.token_count == len(ids)
    assert "".join(e.piece.text for e in events[:-1]) == final.text
    assert final.finish_reason in (decoder_pb2.FINISH_REASON_EOS, decoder_pb2.FINISH_REASON_LENGTH)
    want = reference.generate(
        request.text,
        target=request.target_language or None,
        max_new_tokens=request.max_new_tokens or None,
    )
    assert ids == [t for t in want.ids if t != reference.manifest.tokens.eos]
    assert final.text == want.text


def call(channel, data: bytes) -> list[edge_pb2.GenerateEvent]:
    generate = channel.unary_stream("/tandem.v1.Edge/Generate")  # bytes in, bytes out
    return [edge_pb2.GenerateEvent.FromString(b) for b in generate(data, timeout=60)]


def expect_ok_or_invalid(channel, data: bytes, reference: Seq2Seq) -> bool:
    try:
        events = call(channel, data)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        assert exc.details()
        return False
    check_stream(events, reference, edge_pb2.GenerateRequest.FromString(data))
    return True


def still_serving(agent, channel, reference) -> None:
    request = edge_pb2.GenerateRequest(text="w10 w11 w12", target_language="fr")
    assert expect_ok_or_invalid(channel, request.SerializeToString(), reference)
    assert agent.metrics.counts.get("fallback:cloud_rejected", 0) == 0, agent.metrics.counts


def test_arbitrary_fields_never_crash_the_agent(served, reference):
    agent, channel = served
    answered = []

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(generate_requests())
    def check(request):
        answered.append(expect_ok_or_invalid(channel, request.SerializeToString(), reference))

    check()
    still_serving(agent, channel, reference)
    assert any(answered) and not all(answered)  # both outcomes were reached


def test_raw_bytes_never_crash_the_agent(served, reference):
    agent, channel = served

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=300), mutated(generate_requests())))
    def check(data):
        expect_ok_or_invalid(channel, data, reference)

    check()
    with pytest.raises(grpc.RpcError) as info:
        call(channel, b"\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid tandem.v1.GenerateRequest" in info.value.details()
    still_serving(agent, channel, reference)
