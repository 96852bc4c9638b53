"""Pacing: the hold between two token messages grows with the streams, within its bounds."""

from __future__ import annotations

import pytest

from tandem.cloud.pacing import Pacing


def test_alone_a_stream_is_held_the_interval_and_a_busy_model_holds_longer():
    pacing = Pacing(min_s=0.02, max_s=0.2, cpu_share=0.02)
    pacing.observe(130e-6)
    assert pacing.hold_s(1) == 0.02  # 1 x 130 us / 2 % = 6.5 ms: the interval wins
    assert pacing.hold_s(16) == pytest.approx(16 * 130e-6 / 0.02)  # 104 ms
    assert pacing.hold_s(64) == 0.2  # 416 ms wanted; never past the longest hold


def test_the_message_cost_is_a_running_average_of_what_was_measured():
    pacing = Pacing(min_s=0.02, max_s=0.2, cpu_share=0.02)
    pacing.observe(100e-6)
    assert pacing.message_cpu_s == pytest.approx(100e-6)
    for _ in range(200):
        pacing.observe(200e-6)
    assert pacing.message_cpu_s == pytest.approx(200e-6, rel=1e-3)


@pytest.mark.parametrize(
    "pacing",
    [Pacing(min_s=0.02, max_s=0.2, cpu_share=0.0), Pacing(min_s=0.0, max_s=0.2, cpu_share=0.02)],
)
def test_no_share_or_no_interval_turns_pacing_off(pacing):
    pacing.observe(1e-3)
    assert pacing.hold_s(64) == pacing.min_s
