"""One learning rule: the agent and the simulator learn exactly what AgentKnowledge learns.

Property: any sequence of events (probes, late/failed/completed calls, finished requests, how
long a decided route took to the last token, the radio's use by a call)
gives bit-identical observations whether it is fed to ``AgentKnowledge`` directly, through
the simulator's event queue (events queued in any order, delivered as the decisions' time
passes them), or through the edge agent's own entry points (``probe_sent``, ``call_late``,
``call_done``, ... at its clock, from the messages it really receives; ``radio_used`` from the
``RadioUse`` its cloud client reports when a call ends; ``request_settled`` from the decision
and the instant it was taken).
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.edge.cloud_client import CloudOutcome, RadioUse
from tandem.edge.race import SentCall
from tandem.emulate.processes import free_port
from tandem.errors import CloudDeadline, CloudUnavailable, StreamBroken
from tandem.policy import Decision, PolicyConfig, Route
from tandem.policy.knowledge import (
    AgentKnowledge,
    CallDone,
    CallFailed,
    CallLate,
    ProbeResult,
    ProbeSent,
    RadioUsed,
    RequestDone,
    RequestSettled,
)
from tandem.sim.senses import Senses
from tandem.v1 import decoder_pb2

LANGS = ("", "fr", "de")
TOKEN_BYTES = PolicyConfig().token_bytes  # the agent's default policy's, as it prices tokens


@st.composite
def event_at(draw, t: float):
    kinds = ["sent", "result", "late", "failed", "done", "request", "radio", "settled"]
    kind = draw(st.sampled_from(kinds))
    if kind == "sent":
        return ProbeSent(t)
    if kind == "result":
        return ProbeResult(t, draw(st.none() | st.floats(0.5, 3000.0)))
    if kind == "late":
        return CallLate(t, t - draw(st.floats(0.0, 10.0)), draw(st.integers(100, 10**6)),
                        draw(st.booleans()))  # fmt: skip
    if kind == "failed":
        return CallFailed(t)
    if kind == "radio":  # a call held the radio from its start until now; tokens as priced
        tokens = draw(st.integers(0, 80))
        return RadioUsed(t, t - draw(st.floats(0.0, 3.0)), draw(st.integers(100, 10**6)),
                         tokens * TOKEN_BYTES), tokens  # fmt: skip
    if kind == "settled":  # a request decided a while ago has its last token now
        route = draw(st.sampled_from(list(Route)))
        predicted = draw(st.floats(1.0, 3000.0) | st.just(math.inf))
        decision = Decision(route, "cloud_faster", local_ms=predicted, cloud_ms=predicted,
                            handoff_ms=predicted)  # fmt: skip
        event = RequestSettled.of(t, t - draw(st.floats(0.0, 5.0)), decision)
        return event, decision
    if kind == "request":
        return RequestDone(t, draw(st.sampled_from(LANGS)), draw(st.integers(1, 60)),
                           draw(st.integers(1, 120)))  # fmt: skip
    # What the agent reads from a final message, as the agent reads it (float32 fields).
    final = decoder_pb2.DecodeFinal(
        reason=decoder_pb2.FINISH_REASON_EOS,
        queue_ms=draw(st.floats(0.0, 200.0)),
        decode_ms=draw(st.floats(0.0, 500.0)),
        token_count=draw(st.integers(0, 50)),
    )
    ttft_s = draw(st.none() | st.floats(0.001, 5.0))
    return CallDone(
        t,
        draw(st.integers(100, 10**6)),
        ttft_s * 1000 if ttft_s is not None else None,
        queue_ms=final.queue_ms,
        first_step_ms=final.decode_ms / max(final.token_count, 1),
    ), (final, ttft_s)  # fmt: skip


@st.composite
def histories(draw):
    """(event, final message or None, question) in time order: each question is asked after
    its event and before the next one."""
    gaps = draw(st.lists(st.floats(0.001, 4.0), min_size=1, max_size=40))
    t, out = 0.0, []
    for i, gap in enumerate(gaps):
        t += gap
        event = draw(event_at(t))
        extra = None
        if isinstance(event, tuple):
            event, extra = event
        until_next = gaps[i + 1] if i + 1 < len(gaps) else 10.0
        wait = until_next * draw(st.floats(0.0, 0.99))
        ask = (wait, draw(st.integers(1, 60)), draw(st.sampled_from(LANGS)),
               draw(st.floats(0.0, 50.0)))  # fmt: skip
        out.append((event, extra, ask))
    return out


def _observe(knowledge, t, ask):
    wait, src_len, lang, encode_ms = ask
    return knowledge.observations(t + wait, src_len, lang, encode_ms)


def _agent_feeds(agent, event, extra) -> None:
    """The agent's own entry point for ``event``, as its probes and races call it."""
    agent.now = event.t_s
    match event:
        case ProbeSent():
            agent.probe_sent()
        case ProbeResult(_, rtt_ms):
            agent.probe_result(rtt_ms)
        case CallLate(_, sent_s, nbytes, hedged):
            sent = SentCall(None, "r", sent_s, nbytes)
            if hedged:  # the hedge fired: local decoding starts, the call goes on
                agent.call_late(sent, abandoned=False)
            elif nbytes % 2:  # our own first-token timeout, or the call's deadline firing
                agent.call_late(sent, abandoned=True)
            else:
                agent.call_failed(sent, CloudDeadline("no token before the deadline"))
        case CallFailed():
            error = StreamBroken("cut", [5]) if int(event.t_s * 1e3) % 2 else CloudUnavailable("x")
            agent.call_failed(SentCall(None, "r", 0.0, 100), error)
        case CallDone(_, nbytes):
            final, ttft_s = extra
            agent.call_done(SentCall(None, "r", 0.0, nbytes), CloudOutcome([], final, ttft_s, 1))
        case RadioUsed(t_s, start_s, up_bytes):
            agent.radio_used(RadioUse(t_s - start_s, up_bytes, extra))
        case RequestSettled(_, decided_s):
            assert agent.request_settled("outcome", extra, decided_s) == "outcome"
        case RequestDone(_, lang, src_len, steps):
            eos = steps % 2 == 0
            ids = [7] * (steps - 1 if eos else steps)
            agent.request_done(lang or None, src_len, ids, "eos" if eos else "length")


def test_agent_simulator_and_knowledge_learn_alike(agent_factory):
    # A configured cloud nobody answers (never called) and a breaker that never opens: the
    # breaker is the agent's own state, not knowledge.
    agent = agent_factory(free_port(), policy="cost_model", failure_threshold=10**9)
    agent.load.other_load = lambda: 0.0  # psutil's reading of other processes
    agent.clock = lambda: agent.now

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(histories(), st.randoms(use_true_random=False))
    def check(history, rng):
        direct = AgentKnowledge(agent.policy, agent.device_profile)
        agent.knowledge = AgentKnowledge(agent.policy, agent.device_profile)
        events = [event for event, _, _ in history]
        probes = [e for e in events if isinstance(e, ProbeSent | ProbeResult)]
        others = [e for e in events if not isinstance(e, ProbeSent | ProbeResult)]
        rng.shuffle(others)  # the simulator queues events out of order, as calls overlap
        sim = Senses(AgentKnowledge(agent.policy, agent.device_profile), probes)
        for event in others:
            sim.later(event)
        for event, extra, ask in history:
            direct.apply(event)
            _agent_feeds(agent, event, extra)
            expected = _observe(direct, event.t_s, ask)
            sim.catch_up(event.t_s + ask[0])
            assert _observe(sim.knowledge, event.t_s, ask) == expected
            wait, src_len, lang, encode_ms = ask
            agent.now = event.t_s + wait
            assert agent.observations(src_len, lang or None, False, encode_ms) == expected
        assert agent.knowledge.net == direct.net == sim.knowledge.net
        assert agent.knowledge.radio == direct.radio == sim.knowledge.radio
        assert agent.knowledge.cloud_overrun_ms == direct.cloud_overrun_ms
        assert direct.cloud_overrun_ms == sim.knowledge.cloud_overrun_ms

    check()
