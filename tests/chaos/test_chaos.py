"""The chaos scenario, full size: 1,000 requests through the real agent (``tandem edge run``)
to the real cloud (``tandem cloud serve``) through the shaping relay, while the cloud is
SIGKILLed and restarted, the link is partitioned and its latency spikes. Nothing may be lost,
duplicated or different from the local reference decode.

A CI stage of its own (``make test`` runs ``pytest -m chaos tests/chaos`` after the fast suite):
about a minute on a quiet 2-core machine, well under its 10-minute budget.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tandem.emulate.chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.chaos


def test_nothing_is_lost_duplicated_or_changed_under_chaos(tmp_path):
    cfg = ChaosConfig()  # 1,000 requests, 3 kills, 3 partitions, 4 spikes, seed 0
    summary = run_chaos(cfg, tmp_path)
    print(json.dumps(summary.as_dict()))
    assert summary.failures == ()
    assert summary.requests == summary.answered == 1000
    assert summary.lost == summary.duplicated == summary.gaps == summary.mismatched == 0
    # Every planned fault really happened, and the traffic felt them: both routes served,
    # and requests fell back to local decoding.
    assert (summary.cloud_kills, summary.partitions, summary.spikes) == (3, 3, 4)
    assert summary.routes.get("cloud", 0) > 0 and summary.routes.get("local", 0) > 0
    assert sum(summary.fallbacks.values()) > 0
    assert summary.handoffs > 0, "half the clients' requests go by HANDOFF"
    assert summary.ok


def test_chaos_command_ends_with_one_json_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "chaos", "--requests", "60", "--kills", "1",
         "--partitions", "1", "--spikes", "1", "--seed", "5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("requests", "answered", "lost", "duplicated", "mismatched", "cloud_kills",
                "partitions", "spikes", "wall_s", "routes", "fallbacks", "handoffs"):  # fmt: skip
        assert key in line
    assert line["requests"] == line["answered"] == 60 and line["ok"] is True
    assert (line["cloud_kills"], line["partitions"], line["spikes"]) == (1, 1, 1)
    assert json.loads((tmp_path / "summary.json").read_text()) == line
    assert (tmp_path / "cloud.log").exists() and (tmp_path / "edge.log").exists()
