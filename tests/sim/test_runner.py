"""Runner: determinism, the oracle, constraints, causality, and fallbacks, on synthetic traces."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from sim_helpers import synthetic_trace

from tandem.policy import PolicyConfig
from tandem.policy.knowledge import CallDone, CallFailed, CallLate
from tandem.sim.link import CallTimeline
from tandem.sim.runner import Scenario, make_draws, run_experiment, simulate
from tandem.sim.senses import learn_call
from tandem.sim.trace import parse_trace

N = 300
SCENARIO = Scenario()
SCENARIO_DEADLINE_MS = PolicyConfig().call_deadline_ms


@pytest.fixture(scope="module")
def device(device_profile):
    return device_profile.scaled(SCENARIO.device_speed_factor)


@pytest.fixture(scope="module")
def draws():
    return make_draws(N, SCENARIO, seed=3)


def run(trace, policy, draws, device, cloud, scenario=SCENARIO, cfg=None):
    return simulate(trace, policy, draws, scenario, device, cloud, cfg or PolicyConfig())


def test_same_seed_same_result_different_seed_different(trace, device, cloud_profile, draws):
    a = run(trace, "cost_model", draws, device, cloud_profile)
    b = run(trace, "cost_model", make_draws(N, SCENARIO, seed=3), device, cloud_profile)
    assert np.array_equal(a.latency_ms, b.latency_ms) and a.reasons == b.reasons
    c = run(trace, "cost_model", make_draws(N, SCENARIO, seed=4), device, cloud_profile)
    assert not np.array_equal(a.latency_ms, c.latency_ms)


def test_the_oracle_beats_both_static_routes_and_the_choice_matters(
    trace, device, cloud_profile, draws
):
    oracle = run(trace, "oracle", draws, device, cloud_profile)
    local = run(trace, "always_local", draws, device, cloud_profile)
    cloud = run(trace, "always_cloud", draws, device, cloud_profile)
    assert oracle.latency_ms.mean() <= min(local.latency_ms.mean(), cloud.latency_ms.mean())
    assert 0.2 < oracle.cloud.mean() < 0.8
    assert local.cloud.sum() == 0 and local.bytes_up.sum() == 0
    # always_cloud meets the outage; once the probes notice it, even it routes LOCAL.
    assert "offline" in cloud.reasons


def test_a_crawling_link_times_calls_out_and_the_hedge_avoids_it(device, cloud_profile, draws):
    """At 10 kbit/s probes still return but uploads take seconds: calls hit the deadline."""
    crawl = parse_trace("t_s,bandwidth_mbps\n0,0.01\n", "crawl", last_row_hold_s=10.0)
    cloud = run(crawl, "always_cloud", draws, device, cloud_profile)
    assert cloud.timeout.sum() > 0
    assert np.array_equal(cloud.fallback, cloud.timeout)  # no hedge: a fallback is a timeout
    assert np.all(cloud.latency_ms[cloud.timeout] > SCENARIO_DEADLINE_MS)
    # Two timeouts in a row declare an outage until the next probe returns.
    assert "offline" in cloud.reasons
    cm = run(crawl, "cost_model", draws, device, cloud_profile)
    assert cm.timeout.sum() == 0 and cm.latency_ms.mean() < 0.5 * cloud.latency_ms.mean()


def test_cost_model_is_close_to_the_oracle_on_a_synthetic_trace(
    trace, device, cloud_profile, draws
):
    oracle = run(trace, "oracle", draws, device, cloud_profile)
    cm = run(trace, "cost_model", draws, device, cloud_profile)
    assert cm.latency_ms.mean() <= 1.15 * oracle.latency_ms.mean()
    assert cm.timeout.sum() == 0  # the hedge starts local decoding before any call deadline


def test_local_only_requests_never_upload(trace, device, cloud_profile):
    scenario = dataclasses.replace(SCENARIO, local_only_share=1.0)
    draws = make_draws(100, scenario, seed=0)
    for policy in ("always_cloud", "cost_model", "oracle"):
        r = run(trace, policy, draws, device, cloud_profile, scenario)
        assert r.cloud.sum() == 0 and r.bytes_up.sum() == 0
        assert set(r.reasons) == {"local_only"}


def test_the_byte_budget_is_never_exceeded(trace, device, cloud_profile):
    scenario = dataclasses.replace(SCENARIO, byte_budget=50_000.0)
    draws = make_draws(200, scenario, seed=0)
    r = run(trace, "always_cloud", draws, device, cloud_profile, scenario)
    assert 0 < r.bytes_up.sum() <= 50_000
    assert "byte_budget" in r.reasons


def test_offline_link_every_request_still_finishes_locally(device, cloud_profile):
    dead = parse_trace("t_s,bandwidth_mbps\n0,0\n", "dead", last_row_hold_s=10.0)
    draws = make_draws(60, SCENARIO, seed=1)
    for policy in ("always_cloud", "cost_model", "threshold"):
        r = run(dead, policy, draws, device, cloud_profile)
        assert np.all(np.isfinite(r.latency_ms)) and r.bytes_up.sum() == 0
        # Once the probes notice the outage, the policy routes LOCAL for reason "offline".
        assert r.reasons[-1] == "offline"
        assert r.fallback.sum() == r.cloud.sum()  # every cloud attempt fell back


def test_the_agent_never_sees_the_future(device, cloud_profile, draws):
    """Two traces equal until t = 300 s: every decision taken before then is identical."""
    a = synthetic_trace("a", seconds=900, outage=(600, 650))
    text = "\n".join(
        ["t_s,bandwidth_mbps"]
        + [f"{t},{a.bandwidth_at(t) if t < 300 else 0.05}" for t in range(900)]
    )
    b = parse_trace(text + "\n", "b", last_row_hold_s=1.0)
    ra = run(a, "cost_model", draws, device, cloud_profile)
    rb = run(b, "cost_model", draws, device, cloud_profile)
    before = ra.arrival_s < 299.0  # decisions happen a few ms after arrival
    assert before.sum() > 50
    assert [r for r, m in zip(ra.reasons, before, strict=True) if m] == [
        r for r, m in zip(rb.reasons, before, strict=True) if m
    ]
    assert np.array_equal(ra.predicted_cloud_ms[before], rb.predicted_cloud_ms[before])
    assert ra.reasons != rb.reasons  # ... and the future does change later decisions


def test_run_experiment_always_computes_the_oracle(trace, device_profile, cloud_profile):
    _, results, oracles = run_experiment(
        [trace], ["cost_model"], 50, 0, SCENARIO, device_profile, cloud_profile, PolicyConfig()
    )
    assert [r.policy for r in results] == ["cost_model"]
    assert set(oracles) == {trace.name}


def test_fixed_request_costs_of_device_and_cloud(trace, device, cloud_profile, draws):
    """The device's overhead adds to every request; the cloud's to cloud requests only, and the
    cost model prices it (a dearer cloud is chosen less often)."""
    base = run(trace, "always_local", draws, device, cloud_profile)
    slow_api = dataclasses.replace(device, request_overhead_ms=3.0)
    assert np.allclose(
        run(trace, "always_local", draws, slow_api, cloud_profile).latency_ms,
        base.latency_ms + 3.0,
    )
    dear = dataclasses.replace(cloud_profile, request_overhead_ms=40.0)
    assert np.array_equal(
        run(trace, "always_local", draws, device, dear).latency_ms, base.latency_ms
    )
    cloud = run(trace, "always_cloud", draws, device, cloud_profile)
    cloud_dear = run(trace, "always_cloud", draws, device, dear)
    assert cloud_dear.latency_ms.mean() > cloud.latency_ms.mean() + 30.0
    assert (
        run(trace, "cost_model", draws, device, dear).cloud.mean()
        < run(trace, "cost_model", draws, device, cloud_profile).cloud.mean()
    )


def test_racing_costs_the_local_run_the_device_profiles_race_overhead(
    trace, device, cloud_profile, draws
):
    """HANDOFF requests the local run wins finish ``race_overhead_ms`` later; other routes and
    policies do not pay it."""
    base = run(trace, "handoff", draws, device, cloud_profile)
    racy = dataclasses.replace(device, race_overhead_ms=2.0)
    slower = run(trace, "handoff", draws, racy, cloud_profile)
    won_locally = (base.reasons == np.array(slower.reasons)) & ~base.cloud & ~slower.cloud
    raced = np.array([r in ("handoff_faster", "outage_race") for r in base.reasons])
    both = won_locally & raced
    assert both.any()
    assert np.all(slower.latency_ms[both] >= base.latency_ms[both] + 2.0 - 1e-6)
    local = run(trace, "always_local", draws, device, cloud_profile)
    assert np.array_equal(run(trace, "always_local", draws, racy, cloud_profile).latency_ms,
                          local.latency_ms)  # fmt: skip


def test_the_simulated_agent_learns_from_a_call_only_what_the_real_one_can():
    """No TCP_INFO: a call that turns late before any token teaches the whole payload over the
    time spent (censored); one that had its first token and then ran out of time teaches only
    a failure; a completed call teaches its upload, first token and success at its end."""
    events = []
    learn = events.append

    stalled = CallTimeline(start_s=0.0, upload_end_s=5.0, decode_start_s=5.1, step_s=0.01,
                           n_tokens=3, owd_s=0.03, token_bytes=4, first_token_s=5.2,
                           last_token_s=5.3)  # fmt: skip
    learn_call(learn, stalled, 0.0, 4000, late=2.0, abandon=2.0, done=math.inf, queue_ms=5.0)
    assert events == [CallLate(2.0, sent_s=0.0, nbytes=4000)]

    slow_stream = dataclasses.replace(
        stalled, upload_end_s=0.5, first_token_s=1.0, last_token_s=2.5
    )
    events.clear()
    learn_call(learn, slow_stream, 0.0, 4000, late=2.0, abandon=2.0, done=math.inf, queue_ms=5.0)
    assert events == [CallFailed(2.0)]

    events.clear()
    learn_call(learn, slow_stream, 0.0, 4000, late=None, abandon=2.5, done=2.5, queue_ms=5.0)
    assert events == [CallDone(2.5, 4000, ttft_ms=1000.0, upload_s=0.5, queue_ms=5.0)]


def test_handoff_is_never_slower_than_the_local_run_it_races(trace, device, cloud_profile, draws):
    """HANDOFF decodes locally at once, so without a stall after the switch no request can
    finish later than its own local run would (the same draws give the same lanes until the
    first difference in booking, so compare means, and every request against the oracle's
    local prediction where no fallback happened)."""
    handoff = run(trace, "handoff", draws, device, cloud_profile)
    local = run(trace, "always_local", draws, device, cloud_profile)
    oracle = run(trace, "oracle", draws, device, cloud_profile)
    assert handoff.latency_ms.mean() <= local.latency_ms.mean()
    assert handoff.latency_ms.mean() <= oracle.latency_ms.mean() * 1.03
    assert "handoff_faster" in handoff.reasons
    assert handoff.cloud.any() and handoff.bytes_up.sum() > 0


def test_every_request_books_its_energy(trace, device, cloud_profile, draws):
    local = run(trace, "always_local", draws, device, cloud_profile)
    cloud = run(trace, "always_cloud", draws, device, cloud_profile)
    handoff = run(trace, "handoff", draws, device, cloud_profile)
    assert (local.radio_j == 0).all() and (local.compute_j > 0).all()
    # compute = power_w x the lanes' busy time: LOCAL decodes, CLOUD only encodes
    assert cloud.compute_j.mean() < local.compute_j.mean()
    assert cloud.radio_j.sum() > 0 and handoff.radio_j.sum() > 0
    assert np.allclose(handoff.energy_j, handoff.compute_j + handoff.radio_j)
    # the ledger adds up to the radio's whole timeline: never more than promotion + tail per
    # call plus the active time, and the first call pays the promotion
    from tandem.policy.energy import RADIOS

    lte = RADIOS["lte"]
    first = int(np.argmax(cloud.radio_j > 0))
    assert cloud.radio_j[first] >= lte.promotion_j + lte.tail_j()


def test_min_energy_spends_less_of_the_battery_than_the_latency_objective(
    trace, device, cloud_profile, draws
):
    fast = run(trace, "cost_model", draws, device, cloud_profile)
    thrifty = run(
        trace,
        "cost_model",
        draws,
        device,
        cloud_profile,
        cfg=PolicyConfig(objective="min_energy", latency_budget_factor=2.0),
    )
    assert thrifty.energy_j.mean() < fast.energy_j.mean()
    assert thrifty.latency_ms.mean() <= 2.0 * fast.latency_ms.mean()


def test_the_network_type_sets_the_radio(trace, device, cloud_profile, draws):
    wifi = dataclasses.replace(trace, network_type="wifi")
    a = run(wifi, "always_cloud", draws, device, cloud_profile)
    b = run(trace, "always_cloud", draws, device, cloud_profile)
    assert a.network_type == "wifi" and b.network_type == "lte"
    assert a.radio_j.mean() < b.radio_j.mean()
    assert np.array_equal(a.latency_ms, b.latency_ms)  # energy only; latency is the trace's
    g3 = run(trace, "always_cloud", draws, device, cloud_profile, Scenario(network_type="3g"))
    assert g3.network_type == "3g"
