"""The local API's contract under load: max_concurrent, half-open calls, oversized texts.

edge.proto: requests beyond ``max_concurrent`` are RESOURCE_EXHAUSTED (they used to queue),
a too-long text is INVALID_ARGUMENT (a 1 MB one used to be the transport's
RESOURCE_EXHAUSTED), and calls that never send their request cannot starve complete ones
(20 of them used to).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import grpc
import pytest

from tandem.edge.server import MAX_WAITING_CALLS, create_edge_server
from tandem.v1 import edge_pb2, edge_pb2_grpc

DELAY_S = 0.4


@pytest.fixture
def busy_agent(agent_factory):
    """An agent limited to 4 requests whose encoder takes DELAY_S (so requests overlap);
    ``agent.peak`` records the most encodes seen at once."""
    agent = agent_factory(None, policy="always_local")
    agent.config = dataclasses.replace(agent.config, max_concurrent=4)
    encode = agent.model.encode
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def slow_encode(ids):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(DELAY_S)
            return encode(ids)
        finally:
            with lock:
                state["now"] -= 1

    agent.model.encode = slow_encode
    agent.peak = state
    server, where = create_edge_server(agent)
    yield agent, where
    server.stop(None)


def _generate(where, text="w10 w11 w12", timeout=30):
    with grpc.insecure_channel(f"unix:{where['socket']}") as channel:
        t0 = time.monotonic()
        try:
            events = list(
                edge_pb2_grpc.EdgeStub(channel).Generate(
                    edge_pb2.GenerateRequest(text=text, target_language="fr"), timeout=timeout
                )
            )
            return grpc.StatusCode.OK, time.monotonic() - t0, events
        except grpc.RpcError as exc:
            return exc.code(), time.monotonic() - t0, exc.details()


def test_requests_beyond_max_concurrent_are_resource_exhausted_at_once(busy_agent):
    agent, where = busy_agent
    results = [None] * 40
    barrier = threading.Barrier(40)

    def one(i):
        barrier.wait()
        results[i] = _generate(where)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = [r[0] for r in results]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert 4 <= codes.count(grpc.StatusCode.OK) < 40
    refused = [r for r in results if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert all(seconds < DELAY_S for _, seconds, _ in refused), "refusals must not queue"
    assert agent.peak["peak"] <= 4
    ok = [r for r in results if r[0] == grpc.StatusCode.OK]
    assert all(r[2][-1].final.ids for r in ok)


def test_half_open_calls_cannot_starve_complete_ones(busy_agent):
    _, where = busy_agent
    gate = threading.Event()

    def silence():
        gate.wait()
        yield from ()

    channel = grpc.insecure_channel(f"unix:{where['socket']}")
    silent = channel.stream_stream(
        "/tandem.v1.Edge/Generate", request_serializer=lambda m: m, response_deserializer=bytes
    )
    calls = [silent(silence(), timeout=30) for _ in range(MAX_WAITING_CALLS + 20)]
    try:
        time.sleep(0.2)  # let them all arrive
        code, seconds, events = _generate(where)
        assert code == grpc.StatusCode.OK and events[-1].final.ids
        assert seconds < DELAY_S + 1.0, seconds
    finally:
        gate.set()
        for call in calls:
            call.cancel()
        channel.close()


def test_a_one_megabyte_text_is_invalid_argument(agent_factory):
    agent = agent_factory(None, policy="always_local")
    server, where = create_edge_server(agent)
    try:
        code, _, details = _generate(where, text="w10 " * 250_000)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit is" in details
    finally:
        server.stop(None)


def test_the_python_client_says_overloaded(busy_agent):
    from tandem.edge.client import EdgeClient
    from tandem.errors import Overloaded

    _, where = busy_agent
    errors = []

    def one():
        try:
            with EdgeClient(where["socket"]) as client:
                client.ask("w10 w11 w12", target="fr")
        except Overloaded as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors and all(e.retry_after_s > 0 for e in errors)
