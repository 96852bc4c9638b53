"""policy.energy: the radio's state machine across requests, compute energy, and invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.policy.energy import (
    RADIOS,
    RadioState,
    compute_j,
    marginal_j,
    network_type_of,
    transfer_j,
)

LTE = RADIOS["lte"]


def test_lte_defaults_are_huang_et_al_2012():
    assert (LTE.up_mw_per_mbps, LTE.down_mw_per_mbps, LTE.base_mw) == (438.39, 51.97, 1288.04)
    assert (LTE.promotion_ms, LTE.promotion_mw) == (260.1, 1210.7)
    assert LTE.tail == ((11576.0, 1060.0),)
    # the headline: one short exchange costs ~12.8 J of promotion and tail on LTE
    assert LTE.promotion_j + LTE.tail_j() == pytest.approx(0.3149 + 12.2706, abs=1e-3)


def test_an_idle_radio_pays_promotion_and_the_whole_tail():
    joules, state = transfer_j(LTE, RadioState(), 10.0, 10.1, 4000, 400)
    active = (1288.04 * 0.1 + 438.39 * 4000 * 8e-6 + 51.97 * 400 * 8e-6) / 1000
    assert joules == pytest.approx(LTE.promotion_j + active + LTE.tail_j())
    assert state.last_end_s == 10.1


def test_a_request_in_the_tail_pays_no_new_promotion_only_the_tail_it_cut_short():
    _, state = transfer_j(LTE, RadioState(), 0.0, 0.1, 4000, 400)
    joules, state = transfer_j(LTE, state, 2.1, 2.2, 4000, 400)
    active = (1288.04 * 0.1 + 438.39 * 4000 * 8e-6 + 51.97 * 400 * 8e-6) / 1000
    assert joules == pytest.approx(1.060 * 2.0 + active)
    assert joules < LTE.promotion_j + LTE.tail_j()
    # after the tail has run out, the next one pays a promotion again
    later, _ = transfer_j(LTE, state, 2.2 + LTE.tail_s + 0.01, 2.3 + LTE.tail_s + 0.01, 4000, 400)
    assert later == pytest.approx(LTE.promotion_j + active + LTE.tail_j())


def test_overlapping_transfers_pay_only_the_active_time_beyond():
    _, state = transfer_j(LTE, RadioState(), 0.0, 1.0, 0, 0)
    joules, state = transfer_j(LTE, state, 0.5, 1.2, 0, 0)
    assert joules == pytest.approx(1.28804 * 0.2)
    assert state.last_end_s == 1.2
    inside, _ = transfer_j(LTE, state, 0.3, 0.6, 0, 0)
    assert inside == 0.0


def test_3g_tail_has_two_phases():
    g = RADIOS["3g"]
    assert g.tail_s == pytest.approx((8088.2 + 824.2) / 1000)
    assert g.tail_j(9.0) == pytest.approx(8.0882 * 0.8039 + 0.8242 * 0.6013)
    assert g.tail_j(1.0) == pytest.approx(0.8039)


def test_families_map_to_network_types():
    assert [network_type_of(f) for f in ("LTE", "3G", "5G", "broadband", "x")] == [
        "lte",
        "3g",
        "5g",
        "wifi",
        None,
    ]
    assert compute_j(2.0, 250.0) == 0.5


transfers = st.lists(
    st.tuples(st.floats(0, 30), st.floats(0, 2), st.floats(0, 1e5), st.floats(0, 1e4)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(sorted(RADIOS)), items=transfers)
def test_increments_are_never_negative_and_sum_to_the_timelines_energy(kind, items):
    """Invariant: booking transfers one by one (in start order) never books negative energy,
    and the sum equals the energy of the merged busy timeline computed at once."""
    radio = RADIOS[kind]
    items = sorted(items)
    state, total = RadioState(), 0.0
    for start, dur, up, down in items:
        joules, state = transfer_j(radio, state, start, start + dur, up, down)
        assert joules >= 0 and math.isfinite(joules)
        total += joules
    # the timeline at once: merge busy intervals, then promotion / tail per gap
    merged: list[list[float]] = []
    for start, dur, _, _ in items:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], start + dur)
        else:
            merged.append([start, start + dur])
    expected = sum(radio.active_j(0, up, down) for _, _, up, down in items)
    for k, (a, b) in enumerate(merged):
        gap = None if k == 0 else a - merged[k - 1][1]
        if gap is None or gap >= radio.tail_s:
            expected += radio.promotion_j
        else:
            expected += radio.tail_j(gap) - radio.tail_j()
        expected += radio.active_j(b - a, 0, 0) + radio.tail_j()
    assert total == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_marginal_of_a_fresh_radio_exceeds_one_in_its_tail():
    assert marginal_j(LTE, None, 0.1, 4000, 400) > marginal_j(LTE, 1.0, 0.1, 4000, 400)
