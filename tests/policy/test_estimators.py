"""Network estimators on synthetic step changes, outliers, stale evidence and outages."""

from __future__ import annotations

import pytest

from tandem.policy import (
    EstimatorConfig,
    NetworkState,
    estimate,
    observe_outcome,
    observe_probe_result,
    observe_probe_sent,
    observe_rtt,
    observe_upload,
)

CFG = EstimatorConfig()
MBIT = 1e6
PAYLOAD = 10_000  # bytes


def uploads(state, start_s, mbps_list, every_s=2.0):
    """Feed finished uploads of PAYLOAD bytes at the given throughputs, one every ``every_s``."""
    t = start_s
    for mbps in mbps_list:
        state = observe_upload(state, t, PAYLOAD, PAYLOAD * 8 / (mbps * MBIT), CFG)
        t += every_s
    return state, t - every_s


def test_before_any_sample_the_prior_is_used():
    est = estimate(NetworkState(), 0.0, CFG)
    assert est.uplink_bps == est.uplink_low_bps == CFG.prior_uplink_bps
    assert est.rtt_ms is None and est.loss_rate == 0.0 and not est.outage


def test_steady_link_is_estimated_close_to_its_throughput():
    state, t = uploads(NetworkState(), 0.0, [8.0] * 20)
    est = estimate(state, t, CFG)
    assert est.uplink_bps == pytest.approx(8 * MBIT, rel=0.05)
    assert est.uplink_low_bps <= est.uplink_bps


def test_a_step_down_is_noticed_within_two_uploads():
    state, t = uploads(NetworkState(), 0.0, [10.0] * 15)
    state, t = uploads(state, t + 2, [1.0, 1.0])
    est = estimate(state, t, CFG)
    assert est.uplink_bps < 3.5 * MBIT  # from 10: the EWMA moved most of the way at once
    assert est.uplink_low_bps < 3.5 * MBIT
    state, t = uploads(state, t + 2, [1.0] * 4)
    assert estimate(state, t, CFG).uplink_bps < 1.5 * MBIT


def test_one_lucky_fast_upload_does_not_raise_the_estimate():
    state, t = uploads(NetworkState(), 0.0, [4.0] * 15)
    before = estimate(state, t, CFG)
    state, t = uploads(state, t + 2, [400.0])
    after = estimate(state, t, CFG)
    assert after.uplink_bps <= before.uplink_bps * 1.05
    assert after.uplink_low_bps <= before.uplink_low_bps * 1.05


def test_a_stalled_upload_drops_the_level_but_not_the_window():
    state, t = uploads(NetworkState(), 0.0, [5.0] * 15)
    # Gave up after 0.5 s with 500 of 10,000 bytes acknowledged: a censored sample.
    state = observe_upload(state, t + 1, 500, 0.5, CFG, finished=False)
    est = estimate(state, t + 1, CFG)
    assert est.uplink_bps < 1.5 * MBIT
    assert len(state.uplink_bps.values) == 15  # the quantile window only holds finished uploads


def test_a_low_estimate_reverts_to_the_links_usual_level_without_new_uploads():
    state, t = uploads(NetworkState(), 0.0, [5.0] * 15)
    state = observe_upload(state, t + 1, 100, 1.0, CFG, finished=False)
    assert estimate(state, t + 1, CFG).uplink_bps < 0.5 * MBIT
    later = estimate(state, t + 1 + 4 * CFG.revert_s, CFG)
    assert later.uplink_bps == pytest.approx(5 * MBIT, rel=0.3)


def test_old_evidence_fades_into_the_prior():
    state, t = uploads(NetworkState(), 0.0, [0.1] * 10)
    assert estimate(state, t, CFG).uplink_bps < 0.2 * MBIT
    est = estimate(state, t + 8 * CFG.halflife_s, CFG)
    assert est.uplink_bps > 0.5 * CFG.prior_uplink_bps


def test_rtt_rise_shows_in_the_pessimistic_value_after_one_sample():
    state = NetworkState()
    for k in range(20):
        state = observe_rtt(state, float(k), 50.0, CFG)
    state = observe_rtt(state, 20.0, 400.0, CFG)
    est = estimate(state, 20.0, CFG)
    assert est.rtt_ms == pytest.approx(50.0)  # the median ignores one sample ...
    assert est.rtt_high_ms > 150.0  # ... the pessimistic value does not


def test_consecutive_failures_declare_an_outage_and_one_success_ends_it():
    state = observe_outcome(NetworkState(), 1.0, False, CFG)
    assert not estimate(state, 1.0, CFG).outage
    state = observe_outcome(state, 2.0, False, CFG)
    assert estimate(state, 2.0, CFG).outage
    assert estimate(state, 2.0, CFG).loss_rate > 0.15
    state = observe_outcome(state, 3.0, True, CFG)
    assert not estimate(state, 3.0, CFG).outage


def test_an_overdue_probe_declares_an_outage_before_it_times_out():
    state = NetworkState()
    for k in range(10):
        state = observe_probe_sent(state, 2.0 * k)
        state = observe_probe_result(state, 2.0 * k + 0.06, 60.0, CFG)
    state = observe_probe_sent(state, 20.0)
    assert not estimate(state, 20.1, CFG).outage  # 100 ms: not yet overdue
    assert estimate(state, 20.5, CFG).outage  # 500 ms for a 60 ms round trip: overdue
    state = observe_probe_result(state, 20.6, 600.0, CFG)
    assert not estimate(state, 20.6, CFG).outage  # it came back: the link is up


def test_state_is_a_value_and_updates_do_not_mutate():
    state = NetworkState()
    new = observe_rtt(state, 0.0, 10.0, CFG)
    assert state == NetworkState() and new != state
