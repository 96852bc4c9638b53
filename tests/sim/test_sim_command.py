"""``tandem sim run``: files, stable summary keys, byte-identical reruns, the no-traces help."""

from __future__ import annotations

import json

import pytest
from sim_helpers import synthetic_trace

from tandem.cli import main
from tandem.sim.report import SUMMARY_KEYS


@pytest.fixture(scope="module")
def traces_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traces")
    for name, outage in (("steady", (0, 0)), ("gappy", (100, 160))):
        t = synthetic_trace(name, seconds=300, outage=outage)
        rows = ["t_s,bandwidth_mbps"] + [
            f"{x:g},{b:g}" for x, b in zip(t.t_s, t.bandwidth_mbps, strict=True)
        ]
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    (folder / "README.md").write_text("not a trace\n")
    return folder


def run_cli(traces_dir, out, *extra):
    return main(
        [
            "sim",
            "run",
            "--traces",
            str(traces_dir),
            "--requests",
            "120",
            "--seed",
            "5",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_writes_summary_files_with_stable_keys_and_identical_reruns(traces_dir, tmp_path, capsys):
    assert run_cli(traces_dir, tmp_path / "a", "--no-plots") == 0
    printed = capsys.readouterr().out
    assert "cost_model" in printed and "oracle cloud%" in printed
    assert run_cli(traces_dir, tmp_path / "b", "--no-plots") == 0
    a = (tmp_path / "a" / "summary.csv").read_bytes()
    assert a == (tmp_path / "b" / "summary.csv").read_bytes()
    rows = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert len(rows) == 2 * 6
    assert {r["policy"] for r in rows} == {
        "always_local",
        "always_cloud",
        "threshold",
        "cost_model",
        "handoff",
        "oracle",
    }
    assert {r["trace"] for r in rows} == {"steady", "gappy"}
    for row in rows:
        assert list(row) == list(SUMMARY_KEYS)
        assert row["requests"] == 120
    targets = json.loads((tmp_path / "a" / "targets.json").read_text())
    assert {t["trace"] for t in targets} == {"steady", "gappy"}


def test_policies_subset_and_plots(traces_dir, tmp_path):
    out = tmp_path / "p"
    assert run_cli(traces_dir, out, "--policies", "cost_model,always_cloud") == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in rows] == ["cost_model", "always_cloud"] * 2
    assert (out / "plots" / "gappy_cdf.png").stat().st_size > 1000
    assert (out / "plots" / "gappy_timeline.png").stat().st_size > 1000
    assert (out / "plots" / "gappy_energy.png").stat().st_size > 1000


def test_without_traces_it_explains_where_to_get_them(capsys):
    assert main(["sim", "run"]) == 2
    out = capsys.readouterr().out
    assert "t_s,bandwidth_mbps[,rtt_ms]" in out and "shared/traces" in out


def test_bad_flags_are_one_line_errors(traces_dir, tmp_path, capsys):
    assert run_cli(traces_dir, tmp_path / "x", "--policies", "always_local,fastest") == 2
    assert "unknown policies" in capsys.readouterr().err
    assert main(["sim", "run", "--traces", str(traces_dir)]) == 2
    assert "--out" in capsys.readouterr().err
