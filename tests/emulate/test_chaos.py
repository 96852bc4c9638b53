"""The chaos scenario's bookkeeping: the seeded fault plan and the per-stream verdicts.

The scenario itself runs in ``tests/chaos`` (a CI stage of its own); these check, fast, that
its judge catches what it must: a lost request, a repeated or skipped token index, a second
final event, an answer that differs from the reference or from the pieces streamed before it.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tandem.emulate.chaos import (
    ChaosConfig,
    FinalSeen,
    StreamRecord,
    check_stream,
    edge_yaml,
    plan_faults,
    summarize,
)
from tandem.errors import ConfigError

WANT = ((4, 10, 11, 12), "vier zehn")


def final(ids=WANT[0], text=WANT[1], route="cloud", fallbacks=()):
    return FinalSeen(tuple(ids), text, route, "always_cloud", tuple(fallbacks))


def record(pieces, finals, after=0, error=""):
    return StreamRecord(0, list(pieces), list(finals), after, error)


GOOD_PIECES = [(0, (4,), ""), (1, (10, 11), "vier "), (3, (12,), "zehn")]


def test_a_clean_stream_passes():
    v = check_stream(record(GOOD_PIECES, [final()]), *WANT)
    assert v.answered and not (v.lost or v.duplicated or v.gap or v.mismatched)


@pytest.mark.parametrize(
    "pieces, finals, after, flags",
    [
        (GOOD_PIECES, [], 0, {"lost"}),
        (GOOD_PIECES[:2], [], 0, {"lost"}),
        (GOOD_PIECES + [(3, (12,), "")], [final()], 0, {"duplicated", "mismatched"}),
        (
            [(0, (4,), ""), (0, (4,), ""), *GOOD_PIECES[1:]],
            [final()],
            0,
            {"duplicated", "mismatched"},
        ),
        ([GOOD_PIECES[0], GOOD_PIECES[2]], [final()], 0, {"gap", "mismatched"}),
        (GOOD_PIECES, [final(), final()], 0, {"duplicated"}),
        (GOOD_PIECES, [final()], 1, {"duplicated"}),
        (GOOD_PIECES, [final(ids=(4, 10, 11))], 0, {"mismatched"}),  # truncated answer
        (GOOD_PIECES, [final(text="vier zehn!")], 0, {"mismatched"}),
        (GOOD_PIECES[:2], [final()], 0, {"mismatched"}),  # final disagrees with the pieces
    ],
)
def test_each_fault_in_a_stream_is_flagged(pieces, finals, after, flags):
    v = check_stream(record(pieces, finals, after), *WANT)
    got = {n for n in ("lost", "duplicated", "gap", "mismatched") if getattr(v, n)}
    assert got == flags
    assert v.answered == bool(finals)


def test_summary_counts_and_fails_on_any_bad_request():
    good = record(GOOD_PIECES, [final(fallbacks=("stream_broken",))])
    lost = StreamRecord(1, GOOD_PIECES[:1], [], 0, "edge agent unavailable")
    fired = Counter(kill=2, partition=1)
    s = summarize([good, lost], [WANT, WANT], fired, 12.3, 7)
    d = s.as_dict()
    assert (d["requests"], d["answered"], d["lost"], d["mismatched"]) == (2, 1, 1, 0)
    assert (d["cloud_kills"], d["partitions"], d["spikes"]) == (2, 1, 0)
    assert d["routes"] == {"cloud": 1} and d["fallbacks"] == {"stream_broken": 1}
    assert d["ok"] is False and s.failures == ("request 1: lost edge agent unavailable",)
    assert summarize([good], [WANT], fired, 1.0, 7).ok


def test_fault_plan_is_seeded_and_within_the_run():
    cfg = ChaosConfig(requests=1000, seed=3)
    plan = plan_faults(cfg)
    assert plan == plan_faults(ChaosConfig(requests=1000, seed=3))
    assert plan != plan_faults(ChaosConfig(requests=1000, seed=4))
    assert Counter(f.kind for f in plan) == {"kill": 3, "partition": 3, "spike": 4}
    assert [f.at_request for f in plan] == sorted(f.at_request for f in plan)
    assert all(50 <= f.at_request < 850 for f in plan)
    for f in plan:
        low, high = {"kill": cfg.down_s, "partition": cfg.partition_s, "spike": cfg.spike_s}[f.kind]
        assert low <= f.duration_s <= high
        assert (f.delay_ms > 0) == (f.kind == "spike")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"requests": 0}, "requests must be an integer >= 1"),
        ({"clients": 0}, "clients"),
        ({"cloud_kills": -1}, "cloud_kills"),
        ({"down_s": (2.0, 1.0)}, "down_s must be a range"),
        ({"first_fault_at": 0.9, "last_fault_at": 0.5}, "first_fault_at"),
        ({"rate_per_s": -1.0}, "rate_per_s"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ChaosConfig(**kwargs)


def test_agent_config_is_valid_edge_yaml(tmp_path):
    from tandem.edge.config import edge_config_from_dict

    config = edge_config_from_dict(
        edge_yaml(ChaosConfig(), tmp_path / "b", tmp_path / "s.sock", "127.0.0.1:5")
    )
    assert config.cloud.addresses == ("127.0.0.1:5",) and config.piece_interval_ms == 0
    assert config.cloud.force_route is None
    handoff = edge_config_from_dict(
        edge_yaml(ChaosConfig(), tmp_path / "b", tmp_path / "s.sock", "127.0.0.1:5", handoff=True)
    )
    assert handoff.cloud.force_route == "handoff"
