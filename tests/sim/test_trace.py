"""Trace parsing and the link capacity integral, checked against hand-computed transfers."""

from __future__ import annotations

import csv
import math

import pytest
from sim_helpers import shared_traces_dir

from tandem.errors import ConfigError
from tandem.sim.trace import load_trace, load_traces, parse_trace

# 8 Mbit/s = 1 MB/s for a second, an outage for a second, 4 Mbit/s = 0.5 MB/s for a second.
HAND = "t_s,bandwidth_mbps\n0,8\n1,0\n2,4\n"


@pytest.fixture()
def hand():
    return parse_trace(HAND, "hand", last_row_hold_s=1.0)


def test_capacity_is_the_integral_of_the_sample_and_hold_signal(hand):
    assert hand.duration_s == 3.0
    assert hand.total_bytes == pytest.approx(1.5e6)
    assert hand.capacity(0.5) == pytest.approx(0.5e6)
    assert hand.capacity(1.7) == pytest.approx(1.0e6)  # flat during the outage
    assert hand.capacity(2.5) == pytest.approx(1.25e6)
    assert hand.capacity(4.0) == pytest.approx(2.5e6)  # looped: a whole period plus 1 s


def test_transfer_times_by_hand(hand):
    assert hand.transfer_end(0.0, 0.5e6) == pytest.approx(0.5)
    # 1.5 MB from 0.5 s: 0.5 MB by 1 s, nothing until 2 s, 0.5 MB by 3 s, then the loop
    # restarts at 1 MB/s: the last 0.5 MB take until 3.5 s.
    assert hand.transfer_end(0.5, 1.5e6) == pytest.approx(3.5)
    # Started in the outage: waits for it to end, then 0.25 MB at 0.5 MB/s.
    assert hand.transfer_end(1.2, 0.25e6) == pytest.approx(2.5)
    # Exactly a period's worth of bytes from 0 ends where the last byte of the period goes,
    # which is 3.0 s (the outage is in the middle, the period ends with capacity).
    assert hand.transfer_end(0.0, 1.5e6) == pytest.approx(3.0)
    assert hand.transfer_end(1.0, 0) == 1.0
    assert hand.bytes_between(0.5, 2.5) == pytest.approx(0.75e6)


def test_a_trace_with_no_capacity_never_finishes_a_transfer():
    dead = parse_trace("t_s,bandwidth_mbps\n0,0\n1,0\n", "dead", last_row_hold_s=1.0)
    assert math.isinf(dead.transfer_end(0.0, 1))


def test_rtt_column_is_held_and_empty_cells_mean_unmeasured():
    t = parse_trace("t_s,bandwidth_mbps,rtt_ms\n0,1,\n1,1,70\n2,1,\n3,1,90\n", "r", 1.0)
    assert t.measured_rtt_at(0.5) is None
    assert t.measured_rtt_at(2.5) == 70.0
    assert t.measured_rtt_at(3.2) == 90.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,bw\n0,1\n", "not a trace"),
        ("t_s,bandwidth_mbps\n0,1\n0,2\n", "increase strictly"),
        ("t_s,bandwidth_mbps\n1,1\n", "first t_s must be 0"),
        ("t_s,bandwidth_mbps\n0,-1\n", ">= 0"),
        ("t_s,bandwidth_mbps\n0,fast\n", "expected numbers"),
        ("t_s,bandwidth_mbps\n", "no data rows"),
    ],
)
def test_malformed_traces_raise_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_trace(text, "bad")


def test_load_traces_skips_non_trace_csvs_and_uses_the_index_hold(tmp_path):
    (tmp_path / "a.csv").write_text("t_s,bandwidth_mbps\n0,1\n1,2\n")
    (tmp_path / "index.csv").write_text("file,last_row_hold_s\na.csv,0.25\n")
    traces = load_traces(tmp_path)
    assert [t.name for t in traces] == ["a"]
    assert traces[0].duration_s == pytest.approx(1.25)
    with pytest.raises(ConfigError, match="not a directory"):
        load_traces(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no trace CSV"):
        load_traces(tmp_path / "empty")


def test_the_index_family_sets_each_traces_network_type(tmp_path):
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.csv").write_text("t_s,bandwidth_mbps\n0,1\n1,2\n")
    (tmp_path / "index.csv").write_text(
        "file,family,last_row_hold_s\na.csv,LTE,1\nb.csv,3G,1\nc.csv,broadband,1\n"
    )
    kinds = {t.name: t.network_type for t in load_traces(tmp_path)}
    assert kinds == {"a": "lte", "b": "3g", "c": "wifi", "d": None}
    assert load_trace(tmp_path / "b.csv").network_type == "3g"


def test_shared_traces_load_with_their_documented_durations():
    folder = shared_traces_dir()
    if not (folder / "index.csv").exists():
        pytest.skip(f"no shared traces at {folder} (set TANDEM_TRACES)")
    with (folder / "index.csv").open(newline="") as f:
        index = {row["file"]: row for row in csv.DictReader(f)}
    for name, row in index.items():
        trace = load_trace(folder / name)
        assert trace.duration_s == pytest.approx(float(row["duration_s"]), abs=0.05), name
        mean = trace.total_bytes * 8 / 1e6 / trace.duration_s
        assert mean == pytest.approx(float(row["mean_mbps"]), rel=0.01), name
        assert trace.network_type in ("lte", "3g", "5g", "wifi"), name
