"""AgentKnowledge: each event teaches what the agent can know from it, and no more."""

from __future__ import annotations

import math

import pytest

from tandem.policy import Decision, PolicyConfig, Route, decide
from tandem.policy.knowledge import (
    AgentKnowledge,
    CallDone,
    CallFailed,
    CallLate,
    ProbeResult,
    ProbeSent,
    RequestDone,
    RequestSettled,
)


@pytest.fixture
def knowledge(device):
    return AgentKnowledge(PolicyConfig(), device)


def test_a_late_call_is_a_failure_and_a_censored_upload_sample(knowledge):
    knowledge.call_late(3.0, sent_s=1.0, nbytes=4000)
    net = knowledge.net
    assert net.consecutive_failures == 1 and net.last_failure_s == 3.0
    # the censored sample moves the EWMA (4000 B over 2 s) but not the window of finished ones
    assert net.uplink_bps.values == () and net.uplink_bps.ewma_t_s == 3.0
    assert math.exp(net.uplink_bps.ewma) == pytest.approx(4000 * 8 / 2.0)


def test_a_call_given_up_on_before_the_link_could_answer_is_no_news(knowledge):
    """A hedge that starts local decoding early, on purpose, says nothing about the link: the
    upload alone usually takes longer than it waited (4000 B at the 1 Mbit/s prior: 32 ms)."""
    before = knowledge.net
    knowledge.call_late(1.02, sent_s=1.0, nbytes=4000, hedged=True)
    assert knowledge.net == before
    knowledge.call_late(1.5, sent_s=1.0, nbytes=4000, hedged=True)  # 500 ms: late by any account
    assert knowledge.net.consecutive_failures == 1
    knowledge.call_late(2.02, sent_s=2.0, nbytes=4000)  # given up on, not hedged: a failure
    assert knowledge.net.consecutive_failures == 2


def test_a_failed_call_teaches_nothing_about_the_upload(knowledge):
    knowledge.call_failed(3.0)
    assert knowledge.net.consecutive_failures == 1 and knowledge.net.uplink_bps.ewma is None


def test_a_completed_call_infers_its_upload_from_the_first_token(knowledge):
    knowledge.probe_sent(0.0)
    knowledge.probe_result(0.05, 50.0)
    upload_ms = knowledge.call_done(1.0, 8000, ttft_ms=300.0, queue_ms=20.0, first_step_ms=30.0)
    assert upload_ms == pytest.approx(300.0 - 50.0 - 20.0 - 30.0)
    assert knowledge.net.uplink_bps.values == pytest.approx((8000 * 8 / 0.2,))
    assert knowledge.net.ttft_ms.values == (300.0,) and knowledge.cloud_queue_ms == 20.0
    assert knowledge.net.consecutive_failures == 0 and knowledge.net.last_success_s == 1.0


def test_a_known_upload_time_is_taken_as_it_is(knowledge):
    assert knowledge.call_done(1.0, 8000, ttft_ms=300.0, upload_s=0.25) == 250.0
    assert knowledge.net.uplink_bps.values == (8000 * 8 / 0.25,)
    assert knowledge.cloud_queue_ms == 0.0  # no report: the belief stays


def test_a_call_without_a_token_teaches_only_its_success(knowledge):
    assert knowledge.call_done(1.0, 8000, ttft_ms=None) == 0.0
    assert knowledge.net.uplink_bps.ewma is None and knowledge.net.last_success_s == 1.0


def test_finished_requests_teach_the_length_model(knowledge):
    before = knowledge.observations(0.0, 10, "fr", 0.0).predicted_tokens
    for t in range(20):
        knowledge.request_done(float(t), "fr", 10, 40)
    assert knowledge.observations(20.0, 10, "fr", 0.0).predicted_tokens == pytest.approx(40, abs=2)
    assert before != pytest.approx(40, abs=2)


def test_cloud_requests_that_run_past_their_prediction_raise_the_overrun(device):
    """Each settled CLOUD request moves the overrun by ``overrun_alpha`` towards how far it ran
    past its prediction; on time or early counts 0, and other routes teach nothing."""
    knowledge = AgentKnowledge(PolicyConfig(overrun_alpha=0.5), device)
    knowledge.request_settled(2.0, 1.0, Route.CLOUD, 600.0)  # 1000 ms against 600: 400 over
    assert knowledge.cloud_overrun_ms == pytest.approx(200.0)
    knowledge.request_settled(3.5, 3.0, Route.LOCAL, 100.0)  # a local run: no news
    knowledge.request_settled(4.5, 4.0, Route.HANDOFF, 100.0)
    knowledge.request_settled(5.5, 5.0, Route.CLOUD, math.inf)  # an impossible route
    assert knowledge.cloud_overrun_ms == pytest.approx(200.0)
    knowledge.request_settled(6.3, 6.0, Route.CLOUD, 400.0)  # early: counts as on time
    assert knowledge.cloud_overrun_ms == pytest.approx(100.0)
    assert knowledge.observations(7.0, 8, "de", 1.0).cloud_overrun_ms == pytest.approx(100.0)


def test_a_settled_request_is_priced_by_the_route_it_was_decided_for():
    cloud = Decision(Route.CLOUD, "cloud_faster", local_ms=300.0, cloud_ms=200.0)
    assert RequestSettled.of(2.0, 1.0, cloud) == RequestSettled(2.0, 1.0, Route.CLOUD, 200.0)
    local = Decision(Route.LOCAL, "offline", local_ms=300.0, cloud_ms=math.inf)
    assert RequestSettled.of(2.0, 1.0, local).predicted_ms == 300.0
    race = Decision(Route.HANDOFF, "handoff_faster", 300.0, 200.0, handoff_ms=150.0)
    assert RequestSettled.of(2.0, 1.0, race).predicted_ms == 150.0


def test_observations_read_the_caller_state(knowledge, device):
    obs = knowledge.observations(
        0.0,
        12,
        "",
        encode_ms=device.encoder_ms(12) * 2,  # twice the profile's time: half the CPU is busy
        local_only=True,
        other_load=0.2,
        local_backlog_ms=7.0,
        byte_budget_left=1e6,
    )
    assert obs.cpu_load == pytest.approx(0.5) and obs.local_only and obs.local_backlog_ms == 7.0
    assert obs.byte_budget_left == 1e6 and obs.online and not obs.breaker_open
    assert knowledge.observations(0.0, 12, "", 0.0, other_load=0.3).cpu_load == 0.3
    assert not knowledge.observations(0.0, 12, "", 0.0, has_cloud=False).online
    for _ in range(knowledge.cfg.estimators.outage_failures):
        knowledge.call_failed(1.0)
    assert not knowledge.observations(1.0, 12, "", 0.0).online
    assert knowledge.observations(1.0, 12, "", 0.0, breaker_probe=True).online
    assert knowledge.observations(1.0, 12, "", 0.0, breaker_open=True).breaker_open


def test_only_cost_based_decisions_are_remembered(knowledge, device, cloud):
    obs = knowledge.observations(0.0, 12, "", 0.0)
    decision = decide(obs, device, cloud, knowledge.cfg, knowledge.policy_state)
    knowledge.decided(decision)
    assert knowledge.policy_state.last_route is decision.route
    offline = knowledge.observations(0.0, 12, "", 0.0, has_cloud=False)
    knowledge.decided(decide(offline, device, cloud, knowledge.cfg, knowledge.policy_state))
    assert knowledge.policy_state.last_route is decision.route


def test_apply_is_the_method_of_each_event(device):
    events = [
        ProbeSent(0.0),
        ProbeResult(0.04, 40.0),
        CallLate(2.0, 1.0, 5000),
        CallFailed(2.5),
        CallDone(3.0, 5000, 200.0, None, 4.0, 1.0),
        RequestDone(3.1, "de", 8, 20),
        RequestSettled(3.2, 2.5, Route.CLOUD, 300.0),
        ProbeSent(4.0),
        ProbeResult(5.0, None),
    ]
    held, called = AgentKnowledge(PolicyConfig(), device), AgentKnowledge(PolicyConfig(), device)
    for event in events:
        held.apply(event)
    called.probe_sent(0.0)
    called.probe_result(0.04, 40.0)
    called.call_late(2.0, 1.0, 5000)
    called.call_failed(2.5)
    called.call_done(3.0, 5000, 200.0, None, 4.0, 1.0)
    called.request_done(3.1, "de", 8, 20)
    called.request_settled(3.2, 2.5, Route.CLOUD, 300.0)
    called.probe_sent(4.0)
    called.probe_result(5.0, None)
    assert held.net == called.net and held.lengths == called.lengths
    assert held.cloud_overrun_ms == called.cloud_overrun_ms > 0
    assert held.observations(5.0, 8, "de", 1.0) == called.observations(5.0, 8, "de", 1.0)
    with pytest.raises(TypeError, match="not a knowledge event"):
        held.apply(("probe", 1.0))


def test_the_radio_state_is_known_and_priced_across_requests(device):
    from tandem.policy.energy import RADIOS
    from tandem.policy.knowledge import NetworkTypeSeen, RadioUsed

    k = AgentKnowledge(PolicyConfig(), device, network_type="3g")
    assert k.observations(1.0, 10, "en", 1.0).radio_idle_s is None
    first = k.radio_used(1.0, 1.2, 4000, 400)
    radio = RADIOS["3g"]
    assert first == pytest.approx(
        radio.promotion_j + radio.active_j(0.2, 4000, 400) + radio.tail_j()
    )
    obs = k.observations(3.2, 10, "en", 1.0)
    assert obs.network_type == "3g" and obs.radio_idle_s == pytest.approx(2.0)
    # a held event is the same as the call
    k.apply(RadioUsed(3.5, 3.2, 4000, 400))
    assert k.radio.last_end_s == 3.5
    k.apply(NetworkTypeSeen(4.0, "wifi"))
    assert k.observations(4.0, 10, "en", 1.0).network_type == "wifi"
    with pytest.raises(ValueError, match="network_type"):
        k.network_type_seen(5.0, "carrier-pigeon")


def test_an_outage_the_detector_declares_is_told_apart_from_no_cloud(device):
    k = AgentKnowledge(PolicyConfig(), device)
    k.probe_result(1.0, None)
    k.probe_result(2.0, None)
    obs = k.observations(2.0, 10, "en", 1.0)
    assert not obs.online and obs.outage_detected
    none = k.observations(2.0, 10, "en", 1.0, has_cloud=False)
    assert not none.online and not none.outage_detected
