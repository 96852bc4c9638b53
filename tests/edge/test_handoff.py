"""HANDOFF end to end: a real agent and a real cloud on loopback, and clouds that misbehave.

Whatever happens — the cloud overtakes, dies, stalls, lies, is an older replica without the
method, or never acknowledges — the app sees one contiguous stream whose ids are those of an
all-local decode.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from edge_helpers import contiguous, run
from faults import SlowBatch, SlowModel

from tandem.edge.agent import Piece, Request
from tandem.edge.breaker import BreakerState
from tandem.runtime.seq2seq import Seq2Seq
from tandem.v1 import decoder_pb2, decoder_pb2_grpc

INPUTS = ["w10 w11 w12", "w40 w41", "w7 w8 w9 w20 w33", "w90", "w55 w56 w57 w58"]
LONG = "w7 w8 w9 w20 w33"


@pytest.fixture(scope="module")
def expected(text_bundle):
    model = Seq2Seq.load(text_bundle)
    eos = model.manifest.tokens.eos
    answers = {t: [i for i in model.generate(t, target="fr").ids if i != eos] for t in INPUTS}
    short = model.generate(LONG, target="fr", max_new_tokens=16).ids
    answers["short"] = [i for i in short if i != eos]
    return answers


class CountingBatch(SlowBatch):
    """A slow local batch that counts the decoding steps it ran."""

    steps = None  # a shared list, one entry per step

    def step(self):
        self.steps.append(1)
        return super().step()


class CountingModel(SlowModel):
    def __init__(self, path, delay_s: float) -> None:
        super().__init__(path, delay_s=delay_s)
        self.steps: list[int] = []

    def new_batch(self):
        batch = CountingBatch(self.bundle.sessions, self.manifest)
        batch.delay_s, batch.steps = self.delay_s, self.steps
        return batch


class StallingBatch(SlowBatch):
    """A cloud batch that decodes ``fast_steps`` steps, then hangs for ``stall_s``."""

    fast_steps = 2
    stall_s = 5.0
    done = 0

    def step(self):
        self.done += 1
        if self.done > self.fast_steps:
            time.sleep(self.stall_s)
        return super().step()


class StallingModel(SlowModel):
    def new_batch(self):
        return StallingBatch(self.bundle.sessions, self.manifest)


def handoff_agent(agent_factory, port, **kwargs):
    return agent_factory(port, policy="always_cloud", force_route="handoff", **kwargs)


def test_handoff_answers_equal_local_decodes(text_bundle, cloud_factory, agent_factory, expected):
    server, port = cloud_factory()
    # A device a little slower than the replica: at full speed a short answer can be done
    # locally before the call even reaches the replica, and then nothing is counted there.
    agent = handoff_agent(agent_factory, port, model=SlowModel(text_bundle, delay_s=0.02))
    for text in INPUTS:
        pieces, outcome = run(agent, text)
        assert outcome.decision == "handoff" and outcome.reason == "forced_handoff"
        assert outcome.route in ("local", "cloud") and outcome.fallbacks == []
        assert contiguous(pieces) == outcome.ids == expected[text]
    metric = server.metrics.registry.get_sample_value

    def handoffs():  # a call the agent cancelled (local won) ends on the replica a bit later
        return sum(
            metric("tandem_cloud_requests_total", {"method": "Handoff", "code": code}) or 0
            for code in ("OK", "CANCELLED")
        )

    deadline = time.monotonic() + 5
    while handoffs() < len(INPUTS) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handoffs() == len(INPUTS)
    assert metric("tandem_cloud_requests_total", {"method": "Decode", "code": "OK"}) is None


def test_the_cloud_overtakes_and_local_decoding_stops(
    text_bundle, cloud_factory, agent_factory, expected
):
    """A slow device: the cloud continues from the device's tokens, passes it, and the device
    stops decoding — it ran fewer steps than the answer has tokens."""
    local = CountingModel(text_bundle, delay_s=0.08)
    _, port = cloud_factory()
    agent = handoff_agent(agent_factory, port, model=local)
    local.steps.clear()
    started = time.monotonic()
    pieces, outcome = run(agent, LONG)
    elapsed = time.monotonic() - started
    want = expected[LONG]
    assert contiguous(pieces) == outcome.ids == want
    assert outcome.route == "cloud" and outcome.fallbacks == []
    assert agent.metrics.counts["handoff:switched"] == 1
    assert agent.metrics.counts["handoff:cloud"] == 1
    assert len(local.steps) < len(want) - 1, "local decoding must stop once overtaken"
    assert elapsed < 0.08 * len(want), "the cloud's answer came before local decoding's"
    assert outcome.upload_ms > 0


def test_cloud_killed_after_the_switch_resumes_locally(
    text_bundle, cloud_factory, agent_factory, expected
):
    server, port = cloud_factory(SlowModel(text_bundle, delay_s=0.03))
    agent = handoff_agent(agent_factory, port, model=SlowModel(text_bundle, delay_s=0.15))
    want = expected["short"]
    pieces, outcome, killed = [], None, False
    for item in agent.generate(Request(text=LONG, target="fr", max_new_tokens=16)):
        if isinstance(item, Piece):
            pieces.append(item)
            if agent.metrics.counts.get("handoff:switched") and not killed:
                killed = True
                threading.Thread(target=server.stop).start()  # aborts the stream for real
        else:
            outcome = item
    assert agent.metrics.counts.get("handoff:switched") == 1
    assert outcome.fallbacks == ["stream_broken"] and outcome.route == "local"
    assert contiguous(pieces) == outcome.ids == want


def test_cloud_stalling_after_the_switch_resumes_locally(
    text_bundle, cloud_factory, agent_factory, expected
):
    _, port = cloud_factory(StallingModel(text_bundle))
    agent = handoff_agent(
        agent_factory, port, model=SlowModel(text_bundle, delay_s=0.15), handoff_stall_s=0.3
    )
    started = time.monotonic()
    pieces, outcome = run(agent, LONG, max_new_tokens=16)
    elapsed = time.monotonic() - started
    assert agent.metrics.counts.get("handoff:switched") == 1
    assert outcome.fallbacks == ["handoff_stalled"] and outcome.route == "local"
    assert contiguous(pieces) == outcome.ids == expected["short"]
    assert elapsed < 0.15 * 16 + 1.0, "not waiting for the stalled cloud"


def test_no_cloud_at_all_is_a_local_answer(agent_factory, expected):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = handoff_agent(agent_factory, port)
    pieces, outcome = run(agent, LONG)
    assert outcome.route == "local" and outcome.decision == "handoff"
    assert outcome.fallbacks == ["cloud_unavailable"]
    assert contiguous(pieces) == outcome.ids == expected[LONG]


# -- fake replicas ------------------------------------------------------------------------------


def chunk(start, ids):
    return decoder_pb2.HandoffEvent(tokens=decoder_pb2.TokenChunk(start=start, ids=list(ids)))


ACCEPTED = decoder_pb2.HandoffEvent(accepted=decoder_pb2.HandoffAccepted())


class FakeHandoff(decoder_pb2_grpc.DecoderServicer):
    """Answers Handoff with ``script(prefix)`` after acknowledging (``ack``); no Decode."""

    def __init__(self) -> None:
        self.script = lambda prefix: []
        self.ack = True
        self.decodes = 0

    def Handoff(self, requests, context):
        next(requests)
        if not self.ack:
            time.sleep(3.0)
            return
        yield ACCEPTED
        message = next(requests)
        yield from self.script(list(message.prefix.ids))


class DecodeOnly:
    """An older replica: Decode (relayed to a real one), no Handoff."""

    def __init__(self, port: int) -> None:
        self.stub = decoder_pb2_grpc.DecoderStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        self.decodes = 0

    def Decode(self, request, context):
        self.decodes += 1
        yield from self.stub.Decode(request, timeout=context.time_remaining())


@pytest.fixture
def fake_server():
    servers = []

    def start(servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        if isinstance(servicer, DecodeOnly):  # registered as an older replica would be
            handler = grpc.unary_stream_rpc_method_handler(
                servicer.Decode,
                request_deserializer=decoder_pb2.DecodeRequest.FromString,
                response_serializer=decoder_pb2.DecodeEvent.SerializeToString,
            )
            generic = grpc.method_handlers_generic_handler("tandem.v1.Decoder", {"Decode": handler})
            server.add_generic_rpc_handlers((generic,))
        else:
            decoder_pb2_grpc.add_DecoderServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(None)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("out_of_vocab", "token_out_of_vocab"),
        ("eos_inside", "eos_in_stream"),
        ("wrong_start", "chunk_start"),
        ("tokens_before_ack", "handoff_order"),
        ("second_ack", "handoff_order"),
    ],
)
def test_a_hostile_cloud_mid_handoff_gives_the_local_answer(
    text_bundle, fake_server, agent_factory, expected, name, reason
):
    want = expected[LONG]
    fake = FakeHandoff()
    eos = Seq2Seq.load(text_bundle).manifest.tokens.eos

    def script(prefix):
        k = len(prefix)
        good = want[k : k + 2]
        return {
            "out_of_vocab": [chunk(k, good), chunk(k + len(good), [10**9])],
            "eos_inside": [chunk(k, good + [eos])],
            "wrong_start": [chunk(k + 1, good)],
            "tokens_before_ack": [],
            "second_ack": [chunk(k, good), ACCEPTED],
        }[name]

    fake.script = script
    if name == "tokens_before_ack":

        def handoff(requests, context):
            next(requests)
            yield chunk(0, want[:2])

        fake.Handoff = handoff
    port = fake_server(fake)
    # A slow device, so the lying cloud is ahead when it lies.
    agent = handoff_agent(agent_factory, port, model=SlowModel(text_bundle, delay_s=0.1))
    pieces, outcome = run(agent, LONG)
    assert contiguous(pieces) == outcome.ids == want
    assert outcome.route == "local" and outcome.fallbacks == ["cloud_violation"]
    assert agent.metrics.counts[f"violation:{reason}"] == 1


def test_a_cloud_that_never_acknowledges_is_dropped_as_late(
    text_bundle, fake_server, agent_factory, expected
):
    fake = FakeHandoff()
    fake.ack = False
    port = fake_server(fake)
    agent = handoff_agent(
        agent_factory, port, model=SlowModel(text_bundle, delay_s=0.1), first_token_timeout_s=0.3
    )
    pieces, outcome = run(agent, LONG)
    assert outcome.fallbacks == ["handoff_late"] and outcome.route == "local"
    assert contiguous(pieces) == outcome.ids == expected[LONG]


def test_an_older_replica_without_handoff_gets_decode_calls_instead(
    text_bundle, cloud_factory, fake_server, agent_factory, expected
):
    _, real_port = cloud_factory()
    old = DecodeOnly(real_port)
    port = fake_server(old)
    # Slow enough that the replica's UNIMPLEMENTED arrives before local decoding is done.
    agent = handoff_agent(agent_factory, port, model=SlowModel(text_bundle, delay_s=0.02))
    fallbacks = []
    for text in (LONG, INPUTS[0], INPUTS[1]):
        pieces, outcome = run(agent, text)
        assert contiguous(pieces) == outcome.ids == expected[text]
        fallbacks.append(outcome.fallbacks)
    assert fallbacks == [["handoff_unsupported"], [], []]
    assert old.decodes == 2, "after the first UNIMPLEMENTED, HANDOFF goes by Decode"
    assert agent.metrics.counts["fallback:handoff_unsupported"] == 1
    assert agent.breaker.state(time.monotonic()) is BreakerState.CLOSED


class SilentHandoff(FakeHandoff):
    """Never acknowledges; records when the device's cancel reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.start_bytes = 0

    def Handoff(self, requests, context):
        self.start_bytes = next(requests).start.ByteSize()
        self.started.set()
        context.add_callback(self.cancelled.set)
        while context.is_active():
            time.sleep(0.01)
        return
        yield  # a generator: a stream that never says anything


def test_a_race_won_locally_cancels_the_call_off_the_answers_path(
    text_bundle, fake_server, agent_factory, expected
):
    """The local run wins (the replica never acknowledges): the answer is the local decode,
    the call is cancelled afterwards by the client's canceller (the replica sees it end), and
    the message — built in the call's own thread — is what the learner counts."""
    fake = SilentHandoff()
    port = fake_server(fake)
    # A local run of a few steps of 20 ms: the call is open at the replica long before it ends.
    agent = handoff_agent(
        agent_factory, port, model=SlowModel(text_bundle, delay_s=0.02), first_token_timeout_s=30.0
    )
    pieces, outcome = run(agent, LONG)
    assert outcome.route == "local" and outcome.fallbacks == []
    assert contiguous(pieces) == outcome.ids == expected[LONG]
    assert fake.started.wait(5.0), "the call reached the replica"
    assert fake.cancelled.wait(5.0), "the canceller cancelled the call"
    assert agent.metrics.counts["handoff:local"] == 1
    assert fake.start_bytes > 0
