"""decide: constraints every policy honours, cost-model behaviour, and invariants."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.policy import (
    POLICIES,
    Observations,
    PolicyConfig,
    PolicyState,
    Route,
    decide,
    load_from_timing,
    predict_costs,
    remember,
    slowdown,
)

GOOD = dict(rtt_ms=60.0, rtt_high_ms=80.0, uplink_bps=20e6, uplink_low_bps=10e6)


def obs(**kw) -> Observations:
    base = dict(src_len=20, predicted_tokens=40.0, predicted_tokens_sd=2.0, **GOOD)
    base.update(kw)
    return Observations(**base)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"online": False}, "offline"),
        ({"local_only": True}, "local_only"),
        ({"local_only": True, "online": False}, "local_only"),
        ({"breaker_open": True}, "breaker_open"),
        ({"byte_budget_left": 1000.0}, "byte_budget"),
    ],
)
def test_constraints_force_local_for_every_policy(policy, kw, reason, device, cloud):
    d = decide(obs(**kw), device, cloud, PolicyConfig(policy=policy))
    assert d.route is Route.LOCAL and d.reason == reason and d.hedge_deadline_ms is None


def test_a_budget_that_covers_the_upload_does_not_block(device, cloud):
    d = decide(obs(byte_budget_left=1e9), device, cloud, PolicyConfig(policy="always_cloud"))
    assert d.route is Route.CLOUD


def test_static_policies(device, cloud):
    assert decide(obs(), device, cloud, PolicyConfig(policy="always_local")).route is Route.LOCAL
    d = decide(obs(), device, cloud, PolicyConfig(policy="always_cloud"))
    assert d.route is Route.CLOUD and d.hedge_deadline_ms is None
    thr = PolicyConfig(policy="threshold")
    assert decide(obs(), device, cloud, thr).route is Route.CLOUD
    assert decide(obs(src_len=3), device, cloud, thr).route is Route.LOCAL
    slow = obs(uplink_bps=100e3, uplink_low_bps=50e3)
    assert decide(slow, device, cloud, thr).route is Route.LOCAL


def test_cost_model_sends_long_outputs_to_the_cloud_with_a_hedge(device, cloud):
    cfg = PolicyConfig()
    d = decide(obs(predicted_tokens=60.0), device, cloud, cfg)
    assert d.route is Route.CLOUD and d.reason == "cloud_faster"
    assert d.cloud_ms < d.local_ms
    assert d.hedge_deadline_ms is not None and 0 < d.hedge_deadline_ms < d.local_ms


def test_a_latency_hedge_never_waits_longer_than_the_cloud_would_save(device, cloud):
    """Past the predicted saving, waiting can only lose: a near tie starts both at once."""
    cfg = PolicyConfig()
    for tokens in (20.0, 30.0, 45.0, 60.0, 120.0):
        d = decide(obs(predicted_tokens=tokens), device, cloud, cfg)
        if d.route is Route.CLOUD:
            costs = predict_costs(obs(predicted_tokens=tokens), device, cloud, cfg)
            assert d.hedge_deadline_ms == min(costs.hedge_deadline_ms, d.local_ms - d.cloud_ms)
    tie = decide(obs(predicted_tokens=60.0), device, cloud, cfg, PolicyState(Route.CLOUD))
    assert tie.hedge_deadline_ms >= 0
    energy = PolicyConfig(objective="min_energy")
    d = decide(obs(predicted_tokens=120.0), device, cloud, energy)
    if d.route is Route.CLOUD:  # an energy objective keeps the usual hedge (a race costs joules)
        costs = predict_costs(obs(predicted_tokens=120.0), device, cloud, energy)
        assert d.hedge_deadline_ms == costs.hedge_deadline_ms


def test_a_cloud_that_has_been_running_late_shortens_the_latency_hedge(device, cloud):
    """A saving no larger than what CLOUD requests recently ran past their predictions is no
    saving to count on: the hedge shrinks by the overrun, down to starting both at once."""
    cfg = PolicyConfig()
    o = obs(predicted_tokens=120.0)
    d = decide(o, device, cloud, cfg)
    assert d.route is Route.CLOUD and d.hedge_deadline_ms > 0
    saving = d.local_ms - d.cloud_ms
    costs = predict_costs(o, device, cloud, cfg)
    for overrun in (0.25 * saving, 0.75 * saving, 2 * saving):
        late = decide(dataclasses.replace(o, cloud_overrun_ms=overrun), device, cloud, cfg)
        assert late.route is Route.CLOUD  # the route is priced as before; only the hedge moves
        expected = min(costs.hedge_deadline_ms, max(0.0, saving - overrun))
        assert late.hedge_deadline_ms == pytest.approx(expected)
    assert late.hedge_deadline_ms == 0.0
    energy = PolicyConfig(objective="min_energy")  # a race costs joules: the usual hedge
    late = decide(dataclasses.replace(o, cloud_overrun_ms=2 * saving), device, cloud, energy)
    if late.route is Route.CLOUD:
        assert late.hedge_deadline_ms == predict_costs(o, device, cloud, energy).hedge_deadline_ms


def test_cost_model_keeps_short_outputs_local(device, cloud):
    d = decide(obs(predicted_tokens=4.0, predicted_tokens_sd=0.5), device, cloud, PolicyConfig())
    assert d.route is Route.LOCAL and d.reason == "local_faster"


def test_cpu_load_pushes_work_to_the_cloud(device, cloud):
    o = obs(predicted_tokens=12.0, predicted_tokens_sd=1.0)
    assert decide(o, device, cloud, PolicyConfig()).route is Route.LOCAL
    busy = dataclasses.replace(o, cpu_load=0.75)
    assert decide(busy, device, cloud, PolicyConfig()).route is Route.CLOUD


def test_a_slow_link_keeps_work_local(device, cloud):
    o = obs(uplink_bps=50e3, uplink_low_bps=30e3)
    assert decide(o, device, cloud, PolicyConfig()).route is Route.LOCAL


def test_failures_make_the_cloud_more_expensive(device, cloud):
    cfg = PolicyConfig()
    calm = predict_costs(obs(), device, cloud, cfg)
    lossy = predict_costs(obs(loss_rate=0.5), device, cloud, cfg)
    assert lossy.cloud_ms > calm.cloud_ms and lossy.local_ms == calm.local_ms


def test_hysteresis_keeps_the_last_route_near_the_break_even_point(device, cloud):
    cfg = PolicyConfig(hysteresis=0.2)
    # Find a request length where the two routes cost about the same.
    n = next(
        k
        for k in range(1, 200)
        if predict_costs(
            obs(predicted_tokens=k, predicted_tokens_sd=0), device, cloud, cfg
        ).cloud_ms
        < predict_costs(obs(predicted_tokens=k, predicted_tokens_sd=0), device, cloud, cfg).local_ms
    )
    o = obs(predicted_tokens=float(n), predicted_tokens_sd=0.0)
    assert decide(o, device, cloud, cfg, PolicyState(Route.LOCAL)).route is Route.LOCAL
    assert decide(o, device, cloud, cfg, PolicyState(Route.CLOUD)).route is Route.CLOUD


def test_remember_ignores_forced_routes(device, cloud):
    state = PolicyState(Route.CLOUD)
    forced = decide(obs(online=False), device, cloud, PolicyConfig())
    assert remember(state, forced) == state
    chosen = decide(obs(predicted_tokens=2.0), device, cloud, PolicyConfig())
    assert remember(state, chosen) == PolicyState(chosen.route)


def test_load_from_timing_inverts_slowdown():
    for load in (0.0, 0.3, 0.75):
        assert load_from_timing(10.0 * slowdown(load), 10.0) == pytest.approx(load)
    assert load_from_timing(5.0, 10.0) == 0.0  # faster than the profile: no load


def test_observations_reject_nonsense():
    with pytest.raises(ValueError, match="cpu_load"):
        obs(cpu_load=1.5)
    with pytest.raises(ValueError, match="uplink_bps"):
        obs(uplink_bps=-1.0)


# -- properties ------------------------------------------------------------------------------

observations = st.builds(
    Observations,
    src_len=st.integers(0, 200),
    predicted_tokens=st.floats(0, 300),
    predicted_tokens_sd=st.floats(0, 50),
    online=st.booleans(),
    breaker_open=st.just(False),
    local_only=st.booleans(),
    byte_budget_left=st.one_of(st.none(), st.floats(0, 1e6)),
    rtt_ms=st.one_of(st.none(), st.floats(1, 2000)),
    rtt_high_ms=st.one_of(st.none(), st.floats(1, 4000)),
    uplink_bps=st.one_of(st.none(), st.floats(1e3, 1e9)),
    uplink_low_bps=st.one_of(st.none(), st.floats(1e3, 1e9)),
    loss_rate=st.floats(0, 1),
    cpu_load=st.floats(0, 1),
    local_backlog_ms=st.floats(0, 5000),
    cloud_batch=st.integers(1, 16),
    cloud_queue_ms=st.floats(0, 500),
)
states = st.sampled_from([None, PolicyState(), PolicyState(Route.LOCAL), PolicyState(Route.CLOUD)])


@settings(max_examples=300, deadline=None)
@given(
    o=observations, factor=st.floats(1.0, 1000.0), policy=st.sampled_from(POLICIES), state=states
)
def test_more_bandwidth_never_turns_cloud_into_local(o, factor, policy, state, device, cloud):
    """Invariant: all else equal, scaling the uplink up keeps a CLOUD decision CLOUD."""
    cfg = PolicyConfig(policy=policy)
    before = decide(o, device, cloud, cfg, state)
    faster = dataclasses.replace(
        o,
        uplink_bps=None if o.uplink_bps is None else o.uplink_bps * factor,
        uplink_low_bps=None if o.uplink_low_bps is None else o.uplink_low_bps * factor,
    )
    after = decide(faster, device, cloud, cfg, state)
    if before.route is Route.CLOUD:
        assert after.route is Route.CLOUD
    assert after.cloud_ms <= before.cloud_ms or math.isnan(before.cloud_ms)


@settings(max_examples=300, deadline=None)
@given(o=observations, policy=st.sampled_from(POLICIES), state=states)
def test_decide_is_total_and_honours_constraints(o, policy, state, device, cloud):
    """Invariant: any valid observation gets a decision; offline and local_only mean LOCAL."""
    d = decide(o, device, cloud, PolicyConfig(policy=policy), state)
    assert d.route in (Route.LOCAL, Route.CLOUD, Route.HANDOFF)
    if policy != "handoff":
        assert d.route is not Route.HANDOFF
    assert math.isfinite(d.local_ms) and d.local_ms >= 0 and d.cloud_ms >= 0
    if o.local_only or not o.online:
        assert d.route is Route.LOCAL
    if d.hedge_deadline_ms is not None:
        assert d.route is Route.CLOUD and d.hedge_deadline_ms >= 0


def test_handoff_races_when_the_routes_are_close_and_commits_when_one_clearly_wins(device, cloud):
    cfg = PolicyConfig(policy="handoff", handoff_band=0.5)
    close = decide(obs(predicted_tokens=12.0, predicted_tokens_sd=1.0), device, cloud, cfg)
    assert close.route is Route.HANDOFF and close.reason == "handoff_faster"
    assert close.handoff_ms is not None and close.handoff_ms <= close.local_ms
    assert close.hedge_deadline_ms is None
    slow_link = obs(predicted_tokens=12.0, uplink_bps=20e3, uplink_low_bps=10e3)
    assert decide(slow_link, device, cloud, cfg).route is Route.LOCAL


def test_handoff_races_through_an_outage_only_the_detector_declares(device, cloud):
    cfg = PolicyConfig(policy="handoff")
    d = decide(obs(online=False, outage_detected=True), device, cloud, cfg)
    assert d.route is Route.HANDOFF and d.reason == "outage_race"
    # not for the other objectives (a race through an outage spends the radio for nothing),
    # and never when the breaker is open or the device has no connectivity
    energy = PolicyConfig(policy="handoff", objective="min_energy")
    assert decide(obs(online=False, outage_detected=True), device, cloud, energy).route is (
        Route.LOCAL
    )
    opened = obs(online=False, outage_detected=True, breaker_open=True)
    assert decide(opened, device, cloud, cfg).reason == "breaker_open"
    assert decide(obs(online=False), device, cloud, cfg).reason == "offline"


def test_handoff_prices_latency_energy_and_bytes(device, cloud):
    c = predict_costs(obs(predicted_tokens=12.0, radio_idle_s=2.0), device, cloud, PolicyConfig())
    assert c.handoff_ms <= c.local_ms
    assert c.handoff_bytes > c.payload_bytes  # the prefix travels too
    assert 0 < c.local_j < c.cloud_j  # an LTE radio's tail outweighs 60 ms of compute
    assert c.handoff_j > 0


def test_a_radio_in_its_tail_makes_the_cloud_cheaper(device, cloud):
    cfg = PolicyConfig()
    idle = predict_costs(obs(radio_idle_s=None), device, cloud, cfg)
    tail = predict_costs(obs(radio_idle_s=1.0), device, cloud, cfg)
    assert tail.cloud_j < idle.cloud_j and tail.local_j == idle.local_j


def test_min_energy_takes_the_cheapest_route_within_the_latency_budget(device, cloud):
    o = obs(predicted_tokens=12.0, predicted_tokens_sd=1.0, radio_idle_s=None)
    c = predict_costs(o, device, cloud, PolicyConfig())
    fastest = min(c.local_ms, c.cloud_ms, c.handoff_ms)
    wide = PolicyConfig(policy="handoff", objective="min_energy", latency_budget_factor=10.0)
    d = decide(o, device, cloud, wide)
    assert d.route is Route.LOCAL and d.reason == "least_energy"
    assert d.energy_j == pytest.approx(c.local_j)
    tight = PolicyConfig(policy="cost_model", objective="min_energy", latency_budget_factor=1.0)
    d = decide(o, device, cloud, tight)
    assert (d.local_ms if d.route is Route.LOCAL else d.cloud_ms) == pytest.approx(
        min(c.local_ms, c.cloud_ms)
    )
    assert fastest <= min(c.local_ms, c.cloud_ms)


def test_min_energy_prices_uploads_at_the_typical_uplink(device, cloud):
    """A mean budget is about mean times: min_energy prices uploads at the typical uplink, where
    a single latency decision keeps the pessimistic one."""
    o = obs(predicted_tokens=60.0, uplink_bps=2e6, uplink_low_bps=0.5e6)
    typical = dataclasses.replace(o, uplink_low_bps=o.uplink_bps)
    energy = PolicyConfig(objective="min_energy")
    d = decide(o, device, cloud, energy)
    assert d.cloud_ms == predict_costs(typical, device, cloud, energy).cloud_ms
    assert d.cloud_ms < predict_costs(o, device, cloud, energy).cloud_ms
    latency = decide(o, device, cloud, PolicyConfig())
    assert latency.cloud_ms == predict_costs(o, device, cloud, PolicyConfig()).cloud_ms


def test_weighted_objective_trades_latency_for_energy_and_bytes(device, cloud):
    o = obs(predicted_tokens=60.0, radio_idle_s=None)
    assert decide(o, device, cloud, PolicyConfig(objective="weighted")).route is Route.CLOUD
    heavy = PolicyConfig(objective="weighted", energy_weight_ms_per_j=1000.0)
    assert decide(o, device, cloud, heavy).route is Route.LOCAL
    metered = PolicyConfig(objective="weighted", bytes_weight_ms_per_mb=1e6)
    assert decide(o, device, cloud, metered).route is Route.LOCAL


def test_objective_and_weights_are_checked():
    from tandem.errors import ConfigError

    with pytest.raises(ConfigError, match="objective"):
        PolicyConfig(objective="fastest")
    with pytest.raises(ConfigError, match="latency_budget_factor"):
        PolicyConfig(latency_budget_factor=0.9)
    with pytest.raises(ConfigError, match="energy_weight_ms_per_j"):
        PolicyConfig(energy_weight_ms_per_j=-1)


def test_min_energy_with_a_mean_budget_spends_credit_saved_by_earlier_requests(device, cloud):
    """Invariant: the credit never goes negative, and the chosen routes' predicted latencies
    never exceed factor x the fastest ones' plus nothing borrowed: summed over requests, the
    budget holds."""
    cfg = PolicyConfig(objective="min_energy", latency_budget_scope="mean")
    strict = dataclasses.replace(cfg, latency_budget_scope="request")
    long_output = obs(predicted_tokens=40.0, radio_idle_s=None)
    # no credit yet: as strict as the per-request budget
    assert (
        decide(long_output, device, cloud, cfg).route
        is decide(long_output, device, cloud, strict).route
    )
    state, chosen, fastest = PolicyState(), 0.0, 0.0
    for _ in range(30):
        d = decide(long_output, device, cloud, cfg, state)
        state = remember(state, d)
        assert state.latency_credit_ms >= 0
        chosen += d.local_ms if d.route is Route.LOCAL else d.cloud_ms
        fastest += min(d.local_ms, d.cloud_ms)
    assert chosen <= 1.15 * fastest + 1e-6
    routes = set()
    state = PolicyState(latency_credit_ms=1e6)
    routes.add(decide(long_output, device, cloud, cfg, state).route)
    assert routes == {Route.LOCAL}  # with credit to spend, the cheaper route wins


def test_min_energy_spends_credit_at_a_rate_that_follows_the_radio(device, cloud):
    """A route that needs credit must save a radio cycle's energy per
    ``credit_ms_per_radio_cycle`` ms it adds: with the same credit and the same saving, a rate
    that demands more joules per ms than the saving offers keeps the faster route."""
    from tandem.errors import ConfigError
    from tandem.policy.energy import RADIOS

    assert RADIOS["lte"].cycle_j == pytest.approx(
        RADIOS["lte"].promotion_j + RADIOS["lte"].tail_j()
    )
    assert RADIOS["3g"].cycle_j < RADIOS["lte"].cycle_j
    idle = obs(predicted_tokens=40.0, radio_idle_s=None)
    rich = PolicyState(latency_credit_ms=1e6)
    generous = PolicyConfig(objective="min_energy", credit_ms_per_radio_cycle=1e9)
    stingy = dataclasses.replace(generous, credit_ms_per_radio_cycle=1e-6)
    spent = decide(idle, device, cloud, generous, rich)
    kept = decide(idle, device, cloud, stingy, rich)
    assert spent.route is Route.LOCAL  # credit buys the idle radio's whole cycle
    assert kept.route is Route.CLOUD  # no saving is worth that much: the budget alone rules
    with pytest.raises(ConfigError, match="credit_ms_per_radio_cycle"):
        PolicyConfig(credit_ms_per_radio_cycle=0)
