"""Link model: a cloud call's timeline, loss, probes, and tokens received by a deadline."""

from __future__ import annotations

import math

import pytest

from tandem.sim.link import LinkConfig, cloud_call, loses_packet, probe_rtt_ms, rtt_ms_at
from tandem.sim.trace import parse_trace

# Constant 8 Mbit/s = 1,000,000 bytes/s.
STEADY = parse_trace("t_s,bandwidth_mbps\n0,8\n", "steady", last_row_hold_s=10.0)
LINK = LinkConfig(base_rtt_ms=100.0, loss_rate=0.0)


def test_cloud_call_timeline_by_hand():
    tl = cloud_call(
        STEADY,
        LINK,
        start_s=1.0,
        payload_bytes=10_000,
        n_tokens=20,
        rtt_ms=100.0,
        lost=False,
        cloud_wait_ms=5.0,
        cloud_decode_ms=40.0,
        token_bytes=40,
    )
    assert tl.upload_end_s == pytest.approx(1.010)  # 10 kB at 1 MB/s
    assert tl.decode_start_s == pytest.approx(1.010 + 0.050 + 0.005)
    # First token made after one 2 ms step, 40 B on the wire, then half an RTT.
    assert tl.first_token_s == pytest.approx(1.065 + 0.002 + 0.00004 + 0.050)
    # Last token made at decode start + 40 ms; the 800 stream bytes are long through by then.
    assert tl.last_token_s == pytest.approx(1.065 + 0.040 + 0.050)
    assert tl.tokens_by(STEADY, tl.first_token_s - 1e-6) == 0
    assert tl.tokens_by(STEADY, 1.065 + 0.020 + 0.050) == 10
    assert tl.tokens_by(STEADY, 5.0) == 20
    assert tl.bytes_up_by(STEADY, 1.005, 10_000) == pytest.approx(5000)


def test_a_lost_packet_costs_one_rtt():
    kw = dict(
        start_s=0.0,
        payload_bytes=3000,
        n_tokens=5,
        rtt_ms=80.0,
        cloud_wait_ms=0.0,
        cloud_decode_ms=5.0,
        token_bytes=0,
    )
    clean = cloud_call(STEADY, LINK, lost=False, **kw)
    lossy = cloud_call(STEADY, LINK, lost=True, **kw)
    assert lossy.last_token_s - clean.last_token_s == pytest.approx(0.080)
    cfg = LinkConfig(loss_rate=0.01, mss_bytes=1000)
    # 3 packets: P(at least one loss) = 1 - 0.99^3 = 0.0297.
    assert loses_packet(3000, cfg, 0.029) and not loses_packet(3000, cfg, 0.030)


def test_an_outage_stalls_the_call_and_probes():
    trace = parse_trace("t_s,bandwidth_mbps\n0,8\n1,0\n5,8\n", "gap", last_row_hold_s=5.0)
    tl = cloud_call(trace, LINK, 1.5, 1000, 5, 100.0, False, 0.0, 5.0, 40)
    assert tl.upload_end_s == pytest.approx(5.001)
    assert probe_rtt_ms(trace, LINK, 2.0, 1.0) == pytest.approx(3000 + 100 + 0.2, abs=0.1)
    dead = parse_trace("t_s,bandwidth_mbps\n0,0\n", "dead", last_row_hold_s=1.0)
    assert math.isinf(cloud_call(dead, LINK, 0.0, 10, 5, 100.0, False, 0, 5, 40).last_token_s)
    assert math.isinf(probe_rtt_ms(dead, LINK, 0.0, 1.0))


def test_measured_rtt_overrides_the_base():
    t = parse_trace("t_s,bandwidth_mbps,rtt_ms\n0,1,\n1,1,30\n", "r", last_row_hold_s=1.0)
    assert rtt_ms_at(t, LINK, 0.5) == 100.0
    assert rtt_ms_at(t, LINK, 1.5, jitter=2.0) == 60.0
