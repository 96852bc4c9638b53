"""The pure link model: serialization at rate, delay, loss as one RTO, partitions hold bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tandem.emulate.shaping import MSS_BYTES, LinkState, Pipe, segment_delivery_s
from tandem.errors import ConfigError


def drain(pipe: Pipe, state: LinkState, start: float = 0.0, limit_s: float = 100.0):
    """Run the pipe to empty by jumping from event to event; returns [(time, nbytes)]."""
    out = []
    now = start
    while not pipe.idle and now < limit_s:
        pipe.advance(now, state)
        data = pipe.pop_due(now, state)
        if data:
            out.append((now, len(data)))
        nxt = pipe.next_event_s(state)
        if nxt is None:
            break
        now = max(now, nxt)
    return out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"delay_ms": -1}, "delay_ms must be a finite number >= 0, got -1"),
        ({"delay_ms": math.inf}, "delay_ms must be a finite number >= 0"),
        ({"up_bps": -5.0}, "up_bps must be None (unshaped) or a finite number >= 0, got -5.0"),
        ({"down_bps": math.nan}, "down_bps must be None"),
        ({"loss": 1.0}, "loss must be in [0, 1) (use partitioned for 100%), got 1.0"),
        ({"partitioned": 1}, "partitioned must be a bool, got 1"),
    ],
)
def test_link_state_rejects_bad_fields(kwargs, message):
    with pytest.raises(ConfigError) as err:
        LinkState(**kwargs)
    assert message in str(err.value)


def test_a_loss_costs_one_rtt_as_in_the_simulator():
    assert LinkState(delay_ms=10).loss_penalty_ms == 20.0
    assert LinkState(delay_ms=100).loss_penalty_ms == 200.0


def test_rate_prices_every_segment_and_delay_adds_once():
    state = LinkState(delay_ms=50, up_bps=8e5)  # 100 kB/s
    pipe = Pipe("up", np.random.default_rng(0))
    pipe.push(0.0, b"x" * 10_000)
    deliveries = drain(pipe, state)
    assert sum(n for _, n in deliveries) == 10_000
    # last byte serialized at 0.1 s, arrives 50 ms later
    assert deliveries[-1][0] == pytest.approx(0.15, abs=1e-6)
    # the first segment needed only its own bytes
    assert deliveries[0][0] == pytest.approx(MSS_BYTES / 1e5 + 0.05, abs=1e-6)


def test_unshaped_direction_only_delays():
    state = LinkState(delay_ms=20, up_bps=8e3, down_bps=None)
    pipe = Pipe("down", np.random.default_rng(0))
    pipe.push(1.0, b"y" * 100_000)
    assert drain(pipe, state, start=1.0) == [(pytest.approx(1.02), 100_000)]


def test_rate_change_mid_transfer_prices_each_part_at_its_rate():
    """Like Trace.transfer_end: 50 kB at 100 kB/s for 0.2 s (20 kB), then 300 kB/s for 30 kB."""
    slow = LinkState(up_bps=8e5)
    fast = LinkState(up_bps=2.4e6)
    pipe = Pipe("up", np.random.default_rng(0))
    pipe.push(0.0, b"z" * 50_000)
    pipe.advance(0.2, slow)
    assert pipe.queued_bytes == pytest.approx(30_000, abs=MSS_BYTES)
    deliveries = drain(pipe, fast, start=0.2)
    assert deliveries[-1][0] == pytest.approx(0.3, abs=2e-3)


def test_idle_link_banks_no_credit():
    state = LinkState(up_bps=8e5)
    pipe = Pipe("up", np.random.default_rng(0))
    pipe.advance(0.0, state)
    pipe.advance(10.0, state)  # ten idle seconds
    pipe.push(10.0, b"a" * 10_000)
    assert drain(pipe, state, start=10.0)[-1][0] == pytest.approx(10.1, abs=1e-6)


def test_zero_rate_stalls_until_the_rate_returns():
    pipe = Pipe("up", np.random.default_rng(0))
    pipe.push(0.0, b"b" * 3000)
    outage = LinkState(up_bps=0.0)
    pipe.advance(5.0, outage)
    assert pipe.next_event_s(outage) is None
    assert pipe.pop_due(5.0, outage) == b""
    deliveries = drain(pipe, LinkState(up_bps=8e5), start=5.0)
    assert deliveries[-1][0] == pytest.approx(5.03, abs=1e-6)


def test_partition_holds_bytes_in_flight_and_heals_without_loss():
    state = LinkState(delay_ms=100)
    pipe = Pipe("down", np.random.default_rng(0))
    pipe.push(0.0, b"abc")
    pipe.advance(0.0, state)
    cut = LinkState(delay_ms=100, partitioned=True)
    pipe.advance(0.05, state)
    assert pipe.pop_due(0.5, cut) == b""  # due at 0.1 s, but the link is blackholed
    pipe.push(0.6, b"def")  # sent during the partition: waits to be serialized
    pipe.advance(2.0, cut)
    assert pipe.next_event_s(cut) is None
    pipe.heal(2.0, state)
    pipe.advance(2.0, state)
    assert pipe.pop_due(2.05, state) == b""
    assert pipe.pop_due(2.1, state) == b"abcdef"  # one delay after the heal, in order


def test_uplink_loss_costs_one_rtt_and_keeps_order():
    rng = np.random.default_rng(1)
    state = LinkState(delay_ms=30, loss=0.5)
    times = [segment_delivery_s(0.0, MSS_BYTES, state, rng) for _ in range(400)]
    late = [t for t in times if t > 0.031]
    assert set(np.round(times, 6)) == {0.03, 0.09}  # delay, or delay + one RTT (60 ms)
    assert 0.4 < len(late) / len(times) < 0.6
    down = [segment_delivery_s(0.0, MSS_BYTES, state, rng, "down") for _ in range(100)]
    assert set(np.round(down, 6)) == {0.03}  # the downlink loses nothing, as in the simulator
    pipe = Pipe("up", np.random.default_rng(3))
    for k in range(50):
        pipe.push(k * 0.001, bytes([k]) * 10)
        pipe.advance(k * 0.001, state)
    got = b"".join(pipe.pop_due(t, state) for t in np.arange(0, 5, 0.01))
    assert got == b"".join(bytes([k]) * 10 for k in range(50))


def test_loss_draws_per_segment():
    """A 10-segment chunk at 10% loss is late with probability 1 - 0.9**10 = 65%."""
    rng = np.random.default_rng(2)
    state = LinkState(delay_ms=5, loss=0.1)
    late = np.mean(
        [segment_delivery_s(0.0, 10 * MSS_BYTES, state, rng) > 0.006 for _ in range(2000)]
    )
    assert late == pytest.approx(1 - 0.9**10, abs=0.04)


def test_same_seed_same_deliveries():
    state = LinkState(delay_ms=5, up_bps=1e6, loss=0.2)

    def run():
        pipe = Pipe("up", np.random.default_rng(7))
        pipe.push(0.0, b"q" * 20_000)
        return drain(pipe, state)

    assert run() == run()
