"""TraceShaper's pure part: the link at trace time t, stepped by an injected clock."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.emulate.shaping import LinkState
from tandem.emulate.trace_shaper import Partition, ShaperConfig, TraceShaper, link_state_at
from tandem.errors import ConfigError
from tandem.sim.trace import load_trace, parse_trace

TRACE = parse_trace(
    "t_s,bandwidth_mbps,rtt_ms\n0,4,\n1,0.5,80\n2,0,\n3,10,120\n", "t", last_row_hold_s=1.0
)


class Recorder:
    def __init__(self) -> None:
        self.states: list[LinkState] = []

    def set_state(self, state: LinkState) -> None:
        self.states.append(state)


def test_link_state_follows_bandwidth_rtt_and_partitions():
    cfg = ShaperConfig(base_rtt_ms=60, loss=0.01, partitions=(Partition(2.5, 1.0),))
    s0 = link_state_at(TRACE, 0.5, cfg)
    assert (s0.up_bps, s0.down_bps, s0.delay_ms, s0.loss) == (4e6, 4e6, 30.0, 0.01)
    s1 = link_state_at(TRACE, 1.2, cfg)  # measured RTT replaces the base
    assert (s1.up_bps, s1.delay_ms, s1.partitioned) == (0.5e6, 40.0, False)
    s2 = link_state_at(TRACE, 2.7, cfg)  # an outage row and a partition
    assert s2.up_bps == 0.0 and s2.partitioned and s2.delay_ms == 40.0  # RTT held
    s4 = link_state_at(TRACE, 4.5, cfg)  # the trace loops (duration 4 s)
    assert s4.up_bps == 4e6 and not s4.partitioned


def test_shaper_ticks_with_an_injected_clock():
    now = [100.0]
    target = Recorder()
    shaper = TraceShaper(target, TRACE, ShaperConfig(offset_s=0.95), clock=lambda: now[0])
    assert shaper.tick().up_bps == 4e6  # first tick starts the replay at trace time 0.95
    now[0] += 0.1
    assert shaper.trace_time() == pytest.approx(1.05)
    assert shaper.tick().up_bps == 0.5e6
    assert len(target.states) == shaper.ticks == 2


def test_jitter_is_seeded():
    def run(seed):
        shaper = TraceShaper(
            Recorder(), TRACE, ShaperConfig(rtt_jitter=0.3), clock=lambda: 0.0,
            rng=np.random.default_rng(seed),
        )  # fmt: skip
        return [shaper.tick().delay_ms for _ in range(5)]

    assert run(1) == run(1)
    assert len(set(run(1))) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"base_rtt_ms": -1}, "base_rtt_ms must be >= 0, got -1"),
        ({"loss": 1.0}, "loss must be in [0, 1), got 1.0"),
        ({"interval_s": 0}, "interval_s must be > 0, got 0"),
    ],
)
def test_shaper_config_is_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        ShaperConfig(**kwargs)


def test_partition_is_validated():
    with pytest.raises(ConfigError, match="duration_s must be > 0, got 0"):
        Partition(1.0, 0)


def test_real_trace_sample_and_hold(shared_traces):
    trace = load_trace(shared_traces / "mahimahi_verizon-lte-short_up.csv")
    cfg = ShaperConfig()
    for t in (0.0, 0.05, 12.34, 99.99):
        assert link_state_at(trace, t, cfg).up_bps == pytest.approx(trace.bandwidth_at(t) * 1e6)
