"""``tandem emulate`` end to end: real cloud and agent processes over the loopback relay."""

from __future__ import annotations

import json
import os

import pytest

from tandem.cli import main
from tandem.emulate.links import choose_mode
from tandem.emulate.netns import Capabilities
from tandem.errors import ConfigError
from tandem.sim.report import SUMMARY_KEYS


def test_emulate_writes_the_simulator_report(tmp_path, shared_traces, capsys):
    out = tmp_path / "run"
    code = main([
        "emulate", "--trace", str(shared_traces / "mahimahi_verizon-lte-short_down.csv"),
        "--policy", "always_cloud", "--requests", "6", "--rate", "3", "--mode", "loopback",
        "--out", str(out), "--no-plots",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "mode loopback: asked for" in printed
    rows = json.loads((out / "summary.json").read_text())
    assert list(rows[0]) == list(SUMMARY_KEYS)
    row = rows[0]
    assert (row["trace"], row["policy"], row["requests"]) == (
        "mahimahi_verizon-lte-short_down", "always_cloud", 6,
    )  # fmt: skip
    assert row["cloud_share"] == 1.0 and row["mean_ms"] > 60  # every call pays the 60 ms RTT
    assert row["bytes_up"] > 0
    scenario = json.loads((out / "scenario.json").read_text())
    assert scenario["mode"] == "loopback" and scenario["run"]["answered"] == 6
    assert (out / "summary.csv").read_text().splitlines()[0] == ",".join(SUMMARY_KEYS)


def test_auto_falls_back_to_loopback_and_says_why():
    caps = Capabilities(False, True, True, False, False, False, False, False, "not root")
    mode, why, _ = choose_mode("auto", caps)
    assert mode == "loopback" and "not root" in why
    full = Capabilities(True, True, True, True, True, True, True, False)
    mode, why, _ = choose_mode("auto", full)
    assert mode == "netns" and "no netem" in why


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_emulate_in_namespaces(tmp_path, shared_traces, capsys):
    out = tmp_path / "run"
    code = main([
        "emulate", "--trace", str(shared_traces / "mahimahi_verizon-lte-short_down.csv"),
        "--policy", "cost_model", "--requests", "4", "--rate", "3", "--mode", "netns",
        "--out", str(out), "--no-plots",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "mode netns" in printed and "htb" in printed
    assert json.loads((out / "scenario.json").read_text())["run"]["mode"] == "netns"


def test_netns_mode_without_the_means_is_a_clear_error():
    caps = Capabilities(False, True, True, False, False, False, False, False, "not root")
    with pytest.raises(ConfigError, match="--mode netns is not possible here: not root"):
        choose_mode("netns", caps)
