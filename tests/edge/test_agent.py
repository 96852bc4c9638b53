"""The agent end to end: real cloud replicas and real decoding on loopback, real faults."""

from __future__ import annotations

import threading
import time

import pytest
from edge_helpers import run
from faults import SlowModel

from tandem.edge.agent import Agent, Piece, Request
from tandem.edge.config import CloudSettings, EdgeConfig
from tandem.edge.probes import ping_beat
from tandem.emulate.processes import free_port
from tandem.policy.energy import RADIOS
from tandem.runtime.seq2seq import Seq2Seq

INPUTS = ["w10 w11 w12", "w40 w41", "w7 w8 w9 w20 w33", "w90", "w55 w56 w57 w58"]


def reference(bundle, text: str, target: str = "fr") -> list[int]:
    model = Seq2Seq.load(bundle)
    ids = model.generate(text, target=target).ids
    return [t for t in ids if t != model.manifest.tokens.eos]


@pytest.fixture(scope="module")
def expected(text_bundle):
    return {text: reference(text_bundle, text) for text in INPUTS}


def test_outputs_are_identical_across_routes(cloud_factory, agent_factory, expected):
    _, port = cloud_factory()
    cloud_agent = agent_factory(port, policy="always_cloud")
    local_agent = agent_factory(port, policy="always_local")
    for text in INPUTS:
        pieces, via_cloud = run(cloud_agent, text)
        _, via_local = run(local_agent, text)
        assert via_cloud.route == "cloud" and via_cloud.fallbacks == []
        assert via_local.route == "local" and via_local.reason == "always_local"
        assert via_cloud.ids == via_local.ids == expected[text]
        assert [t for p in pieces for t in p.ids] == expected[text]
        assert via_cloud.text == via_local.text


def test_cloud_never_started_means_local(agent_factory, expected):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = agent_factory(port, policy="always_cloud", first_token_timeout_s=0.5)
    outcomes = [run(agent, text)[1] for text in INPUTS]
    assert all(o.route == "local" for o in outcomes)
    assert [o.ids for o in outcomes] == [expected[t] for t in INPUTS]
    assert outcomes[0].fallbacks == ["cloud_unavailable"]
    # Two failures open the breaker and declare an outage: later requests do not even try.
    assert outcomes[-1].fallbacks == [] and outcomes[-1].reason in ("offline", "breaker_open")
    assert agent.metrics.counts["fallback:cloud_unavailable"] == 2


def test_local_only_never_touches_the_cloud(cloud_factory, agent_factory, expected):
    server, port = cloud_factory()
    agent = agent_factory(port, policy="always_cloud")
    _, outcome = run(agent, INPUTS[0], local_only=True)
    assert outcome.route == "local" and outcome.reason == "local_only"
    assert outcome.ids == expected[INPUTS[0]]


def test_cloud_killed_mid_stream_resumes_locally_with_identical_output(
    text_bundle, cloud_factory, agent_factory, expected
):
    slow = SlowModel(text_bundle, delay_s=0.05)
    server, port = cloud_factory(slow)
    agent = agent_factory(port, policy="always_cloud")
    text = INPUTS[2]
    assert len(expected[text]) >= 6, "need a long enough output to cut it"
    seen = []
    outcome = None
    for item in agent.generate(Request(text=text, target="fr")):
        if isinstance(item, Piece):
            seen.append(item)
            if len(seen) == 3:
                threading.Thread(target=server.stop).start()  # aborts the stream for real
        else:
            outcome = item
    assert outcome.fallbacks == ["stream_broken"]
    assert outcome.route == "local"
    assert outcome.ids == expected[text]
    assert [t for p in seen for t in p.ids] == expected[text]
    assert [p.start for p in seen] == list(range(len(expected[text])))


def test_hedge_fires_and_the_faster_route_wins(text_bundle, cloud_factory, agent_factory, expected):
    slow = SlowModel(text_bundle, first_delay_s=1.5)
    server, port = cloud_factory(slow)
    agent = agent_factory(port, policy="cost_model")
    # Make the policy pick the cloud with a short hedge: a decision with a 100 ms hedge deadline.
    from tandem.policy import Decision, Route

    agent.route = lambda obs: Decision(Route.CLOUD, "cloud_faster", 50.0, 20.0, 100.0)
    start = time.monotonic()
    _, outcome = run(agent, INPUTS[0])
    elapsed = time.monotonic() - start
    assert outcome.fallbacks == ["hedge"]
    assert outcome.route == "local"
    assert outcome.ids == expected[INPUTS[0]]
    assert elapsed < 1.2, "the local decode should win long before the slow cloud answers"


def test_a_hedged_call_past_its_deadline_is_learnt_late_once(
    text_bundle, cloud_factory, agent_factory, expected, monkeypatch
):
    """The hedge teaches that the call is late; the call's deadline, passing while the local
    run still decodes, teaches nothing more (as the simulator learns it)."""
    from tandem.policy import Decision, Route
    from tandem.policy.knowledge import AgentKnowledge

    lates = []
    real_call_late = AgentKnowledge.call_late

    def counted(self, *args, **kwargs):
        lates.append(kwargs.get("hedged", False))
        return real_call_late(self, *args, **kwargs)

    monkeypatch.setattr(AgentKnowledge, "call_late", counted)
    server, port = cloud_factory(SlowModel(text_bundle, first_delay_s=3.0))
    agent = agent_factory(port, policy="cost_model", model=SlowModel(text_bundle, delay_s=0.08))
    agent.route = lambda obs: Decision(Route.CLOUD, "cloud_faster", 50.0, 20.0, 100.0)
    _, outcome = run(agent, INPUTS[2], deadline_s=0.4)
    assert outcome.fallbacks == ["hedge"]
    assert outcome.route == "local" and outcome.ids == expected[INPUTS[2]]
    assert lates == [True], "one late call, learnt at the hedge"


def test_breaker_opens_and_recovers(cloud_factory, agent_factory, expected):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = agent_factory(port, policy="always_cloud", reset_timeout_s=0.5)
    for text in INPUTS[:3]:
        run(agent, text)
    assert agent.breaker.state(time.monotonic()) == "open"
    _, outcome = run(agent, INPUTS[3])
    assert outcome.reason in ("offline", "breaker_open") and outcome.route == "local"
    cloud_factory(port=port)  # the cloud comes up on the same port
    time.sleep(0.6)  # past reset_timeout_s: half-open, one probe request goes through
    deadline = time.monotonic() + 10
    routes = []
    while time.monotonic() < deadline:
        _, outcome = run(agent, INPUTS[4])
        routes.append(outcome.route)
        assert outcome.ids == expected[INPUTS[4]]
        if outcome.route == "cloud":
            break
        time.sleep(0.3)
    assert routes[-1] == "cloud"
    assert agent.breaker.state(time.monotonic()) == "closed"


def test_wrong_fingerprint_decodes_locally_and_counts_the_reason(
    exported, cloud_factory, agent_factory, expected
):
    other = Seq2Seq.load(exported("marian"))  # another model: another fingerprint
    server, port = cloud_factory(other)
    agent = agent_factory(port, policy="always_cloud")
    _, outcome = run(agent, INPUTS[0])
    assert outcome.route == "local"
    assert outcome.fallbacks == ["fingerprint_mismatch"]
    assert outcome.ids == expected[INPUTS[0]]
    assert agent.metrics.counts["fallback:fingerprint_mismatch"] == 1


def test_cloud_stopping_at_the_deadline_resumes_locally(
    text_bundle, cloud_factory, agent_factory, expected
):
    """A replica that runs out of the caller's deadline ends its stream with a final event,
    FINISH_REASON_DEADLINE, after the tokens it managed. That answer is unfinished: the agent
    resumes locally from those tokens instead of returning a truncated output (found by
    tests/edge/test_fuzz.py with deadline_ms=1)."""
    slow = SlowModel(text_bundle, delay_s=0.05)
    _, port = cloud_factory(slow)
    agent = agent_factory(port, policy="always_cloud", first_token_timeout_s=5.0)
    text = INPUTS[2]
    pieces, outcome = run(agent, text, deadline_s=0.2)  # a few 50 ms steps, then no time left
    assert outcome.fallbacks == ["stream_broken"]
    assert outcome.route == "local"
    assert outcome.ids == expected[text]
    assert [t for p in pieces for t in p.ids] == expected[text]
    assert [p.start for p in pieces] == list(range(len(expected[text])))


def test_cloud_draining_mid_stream_resumes_locally(
    text_bundle, cloud_factory, agent_factory, expected
):
    """A draining replica ends in-flight streams with FINISH_REASON_CANCELLED: resume locally."""
    slow = SlowModel(text_bundle, delay_s=0.05)
    server, port = cloud_factory(slow)
    agent = agent_factory(port, policy="always_cloud")
    text = INPUTS[2]
    seen, outcome = [], None
    for item in agent.generate(Request(text=text, target="fr")):
        if isinstance(item, Piece):
            seen.append(item)
            if len(seen) == 2:
                threading.Thread(target=server.drain, args=(0.1,)).start()
        else:
            outcome = item
    assert outcome.fallbacks == ["stream_broken"]
    assert outcome.route == "local"
    assert outcome.ids == expected[text]
    assert [t for p in seen for t in p.ids] == expected[text]


def test_pings_keep_a_fixed_beat_and_time_out_at_ping_timeout(cloud_factory, agent_factory):
    _, port = cloud_factory()
    live = agent_factory(port, ping_interval_s=0.1, ping_timeout_s=0.05)
    dead = agent_factory(free_port(), ping_interval_s=0.1, ping_timeout_s=0.05)  # nobody there
    beats = []
    real_ping = live.cloud.ping

    def counted(timeout_s):
        beats.append((time.monotonic(), timeout_s))
        return real_ping(timeout_s=timeout_s)

    live.cloud.ping = counted
    time.sleep(1.05)
    now = time.monotonic()
    up = live.knowledge.estimate(now)
    down = dead.knowledge.estimate(now)
    assert up.rtt_ms is not None and up.rtt_ms < 50 and not up.outage
    assert down.outage
    assert {t for _, t in beats} == {0.05}
    # ten beats a second, 0.1 s apart whatever each ping took
    assert 9 <= len(beats) <= 11, len(beats)
    gaps = [b[0] - a[0] for a, b in zip(beats, beats[1:], strict=False)]
    assert all(0.05 < g < 0.15 for g in gaps), gaps
    # on the monotonic clock's beat (multiples of 0.1 s), not counted from the agent's start:
    # the emulator starts its traces there (the median allows for a late wake-up or two)
    phases = sorted(t % 0.1 for t, _ in beats)
    assert phases[len(phases) // 2] < 0.02, phases


def test_ping_beat_is_the_next_multiple_of_the_interval():
    assert ping_beat(0.0, 2.0) == 1
    assert ping_beat(3.9, 2.0) == 2
    assert ping_beat(4.0, 2.0) == 3  # strictly after: a beat that is now has already fired
    assert ping_beat(0.3, 0.1) * 0.1 > 0.3  # 0.3 / 0.1 is 2.9999999999999996 in floats
    with pytest.raises(ValueError, match="interval must be > 0"):
        ping_beat(1.0, 0.0)


def _assert_learnt_a_slow_uplink(agent, outcome, expected, text):
    assert outcome.route == "local" and outcome.ids == expected[text]
    assert outcome.fallbacks == ["cloud_unavailable"]
    est = agent.knowledge.estimate(time.monotonic())
    prior = agent.policy.estimators.prior_uplink_bps
    assert est.uplink_bps < prior / 2, (est.uplink_bps, prior)
    assert est.loss_rate > 0


def test_a_call_that_hits_its_deadline_teaches_the_uplink_estimate(agent_factory, expected):
    """A cloud that accepts the connection and then says nothing (a stalled link): the gRPC
    deadline fires before any token. The agent resumes locally and, as after its own
    first-token timeout, counts the call as a censored throughput sample — payload over the
    time spent — so the next decision sees a slow uplink instead of the optimistic prior."""
    import socket

    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()  # the kernel completes the handshake; nobody ever reads or answers
        agent = agent_factory(mute.getsockname()[1], first_token_timeout_s=5.0)
        text = INPUTS[0]
        started = time.monotonic()
        _, outcome = run(agent, text, deadline_s=0.3)
        assert time.monotonic() - started < 3.0  # the deadline, not the 5 s first-token wait
    _assert_learnt_a_slow_uplink(agent, outcome, expected, text)


def test_a_replica_out_of_time_before_any_token_teaches_the_same(
    text_bundle, cloud_factory, agent_factory
):
    """A request that reaches the replica with less of its deadline left than two of its steps
    (a slow upload) is ended by the replica at once: FINISH_REASON_DEADLINE, no token. For the
    agent that is the same news as its own deadline firing: the call counts as a censored
    throughput sample, not only as a failure."""
    _, port = cloud_factory(SlowModel(text_bundle, delay_s=0.1))
    agent = agent_factory(port, first_token_timeout_s=5.0)
    _, warm = run(agent, INPUTS[0])  # the replica learns its steps take 0.1 s: margin 0.2 s
    assert warm.route == "cloud"
    # No target language: a forced first token would be sent even at the deadline.
    _, outcome = run(agent, INPUTS[1], target=None, max_new_tokens=4, deadline_s=0.15)
    assert outcome.route == "local" and len(outcome.ids) == 4
    assert outcome.fallbacks == ["cloud_unavailable"]
    net = agent.knowledge.net
    assert net.consecutive_failures == 1
    assert net.uplink_bps.ewma_t_s == net.last_failure_s  # the censored sample, at the failure


def test_a_broken_profile_stops_the_agent_with_a_config_error(text_bundle, tmp_path):
    """A typo in a hand-edited device profile is a ConfigError naming the file, not a YAML
    traceback at agent start."""
    from tandem.edge.agent import Agent
    from tandem.edge.config import CloudSettings, EdgeConfig, validate
    from tandem.errors import ConfigError

    bad = tmp_path / "device.yaml"
    bad.write_text("encoder_ms: [1.0, 2.0\n", encoding="utf-8")
    config = validate(
        EdgeConfig(
            bundle=str(text_bundle),
            socket=str(tmp_path / "edge.sock"),
            device_profile=str(bad),
            cloud=CloudSettings(enabled=False),
        )
    )
    with pytest.raises(ConfigError, match=r"device_profile .*device\.yaml: not valid YAML"):
        Agent(config)


@pytest.mark.parametrize("route", ["cloud", "handoff"])
def test_every_cloud_call_tells_the_knowledge_when_it_left_the_radio(
    cloud_factory, agent_factory, route
):
    """The radio's state the policy prices (``radio_idle_s``) comes from the calls the agent
    really made: each reports, once, when it stopped holding the radio."""
    _, port = cloud_factory()
    agent = agent_factory(port, policy="always_cloud", force_route=route)
    assert agent.knowledge.radio.last_end_s is None
    began = agent.clock()
    _, outcome = run(agent, INPUTS[0])
    done = agent.clock()
    assert outcome.decision == route
    deadline = time.monotonic() + 5  # a cancelled call ends on its own thread a bit later
    while agent.knowledge.radio.last_end_s is None and time.monotonic() < deadline:
        time.sleep(0.01)
    left = agent.knowledge.radio.last_end_s
    assert left is not None and began < left <= agent.clock()
    assert left <= done + 1.0
    assert agent.observations(3, "fr", False).radio_idle_s >= 0
    joules = agent.metrics.registry.get_sample_value("tandem_edge_radio_joules_total")
    radio = RADIOS[agent.knowledge.network_type]
    assert joules > radio.promotion_j + radio.tail_j()  # from idle: promotion, data, tail


def test_the_configured_radio_prices_the_agents_energy(text_bundle, tmp_path):
    """``network_type`` reaches the knowledge: its radio model is the one the policy prices."""
    config = EdgeConfig(
        bundle=str(text_bundle),
        socket=str(tmp_path / "edge.sock"),
        cloud=CloudSettings(enabled=False),
        network_type="wifi",
    )
    agent = Agent(config)
    try:
        assert agent.knowledge.network_type == "wifi"
        assert RADIOS[agent.knowledge.network_type] is RADIOS["wifi"]
    finally:
        agent.close()
