"""The RAPL reader against a powercap tree of real files, as Linux lays it out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tandem.runtime import rapl

MAX_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def zone(root: Path, name: str, dirname: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    path = root / dirname
    path.mkdir(parents=True)
    (path / "name").write_text(f"{name}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def set_energy(path: Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")


def test_packages_are_summed_and_their_subzones_not_counted_again(tmp_path):
    p0 = zone(tmp_path, "package-0", "intel-rapl:0", 1_000_000)
    p1 = zone(tmp_path, "package-1", "intel-rapl:1", 5_000_000)
    core = zone(tmp_path, "core", "intel-rapl:0:0", 7)
    zone(tmp_path, "package-0", "intel-rapl-mmio:0", 3)  # the same package again, via MMIO
    before = rapl.read_energy(tmp_path)
    set_energy(p0, 3_500_000)
    set_energy(p1, 6_000_000)
    set_energy(core, 9_999_999_999)
    after = rapl.read_energy(tmp_path)
    assert [z.name for z in before.zones] == ["package-0", "package-1"]
    assert rapl.joules_between(before, after) == pytest.approx(3.5)


def test_a_counter_that_wrapped_counts_once_past_its_range(tmp_path):
    p0 = zone(tmp_path, "package-0", "intel-rapl:0", MAX_UJ - 250_000)
    before = rapl.read_energy(tmp_path)
    set_energy(p0, 750_000)
    assert rapl.joules_between(before, rapl.read_energy(tmp_path)) == pytest.approx(1.0)


def test_psys_alone_where_there_is_no_package(tmp_path):
    zone(tmp_path, "psys", "intel-rapl:1", 42)
    assert [z.name for z in rapl.read_energy(tmp_path).zones] == ["psys"]
    zone(tmp_path, "package-0", "intel-rapl:0", 7)  # with a package, psys would overlap it
    assert [z.name for z in rapl.read_energy(tmp_path).zones] == ["package-0"]


def test_no_tree_or_a_garbled_counter_reads_as_none(tmp_path):
    assert rapl.read_energy(tmp_path / "absent") is None
    assert rapl.read_energy(tmp_path) is None  # a tree without zones
    p0 = zone(tmp_path, "package-0", "intel-rapl:0", 1)
    set_energy(p0, 0)
    (p0 / "energy_uj").write_text("not a number\n")
    assert rapl.read_energy(tmp_path) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_counter_only_root_may_read_reads_as_none(tmp_path):
    p0 = zone(tmp_path, "package-0", "intel-rapl:0", 1)
    (p0 / "energy_uj").chmod(0o000)
    try:
        assert rapl.read_energy(tmp_path) is None
    finally:
        (p0 / "energy_uj").chmod(0o600)


def test_power_is_the_energy_between_two_readings_over_the_time(tmp_path):
    from tandem.runtime import profiler

    p0 = zone(tmp_path, "package-0", "intel-rapl:0", 0)
    before = rapl.read_energy(tmp_path)
    set_energy(p0, 6_000_000)
    after = rapl.read_energy(tmp_path)
    assert profiler._power_w(before, after, 2.0) == pytest.approx(3.0)
    assert profiler._power_w(before, None, 2.0) is None
    assert profiler._power_w(None, after, 2.0) is None


def test_a_profile_says_where_its_power_came_from(text_bundle, tmp_path):
    from tandem.policy import Profile
    from tandem.runtime.profiler import measure_profile
    from tandem.runtime.seq2seq import Seq2Seq

    model = Seq2Seq.load(text_bundle)
    zone(tmp_path / "rapl", "package-0", "intel-rapl:0", 123)  # a counter that does not move
    small = {"src_lens": (4,), "positions": (1,), "batches": (1,), "repeats": 1}
    measured = measure_profile(model, **small, powercap=tmp_path / "rapl")
    assert measured["power_source"] == "rapl" and measured["power_w"] == 0.0
    assert Profile.from_dict(measured).power_w == 0.0
    without = measure_profile(model, **small, powercap=tmp_path / "none")
    assert without["power_source"] == "default" and "power_w" not in without
