"""Workload and device load: the inputs the simulator draws, and that they are reproducible."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest

from tandem.errors import BundleError, ConfigError
from tandem.sim.load import BURST_LOAD, CALM_LOAD, make_load
from tandem.sim.workload import load_rows, make_workload


def test_workload_table_is_the_default_models_distribution():
    rows = load_rows()
    langs = {r[0] for r in rows}
    assert langs == {"en", "fr", "de", "es"}
    src = np.repeat([r[1] for r in rows], [r[3] for r in rows])
    steps = np.repeat([r[2] for r in rows], [r[3] for r in rows])
    assert src.min() >= 2 and src.max() <= 60  # 1-4 numbers of up to 9 digits
    assert steps.min() >= 3 and steps.max() <= 160
    assert 10 < np.median(steps) < 40


def test_workload_table_is_package_data_beside_the_model():
    """The table ships as package data next to the bundle, read through importlib.resources."""
    table = importlib.resources.files("tandem") / "models" / "verbalizer" / "workload.csv"
    assert table.is_file()
    assert load_rows() == load_rows("verbalizer")
    with pytest.raises(BundleError, match="no workload table"):
        load_rows("no-such-model")


def test_workload_is_poisson_and_reproducible():
    a = make_workload(4000, 0.5, np.random.default_rng(7))
    b = make_workload(4000, 0.5, np.random.default_rng(7))
    assert a == b
    arrivals = np.array([r.arrival_s for r in a.requests])
    assert np.all(np.diff(arrivals) > 0)
    assert np.mean(np.diff(arrivals)) == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ConfigError):
        make_workload(0, 0.5, np.random.default_rng(0))


def test_local_only_share():
    w = make_workload(2000, 1.0, np.random.default_rng(0), local_only_share=0.25)
    assert np.mean([r.local_only for r in w.requests]) == pytest.approx(0.25, abs=0.03)


def test_load_kinds():
    rng = np.random.default_rng(0)
    assert make_load("idle", 100, rng).at(50) < 0.1
    assert make_load("busy", 100, rng).at(50) == 0.5
    bursty = make_load("bursty", 200_000, rng)
    t = np.arange(0, 200_000, 1.0)
    loads = np.array([bursty.at(x) for x in t])
    assert set(np.unique(loads)) == {CALM_LOAD, BURST_LOAD}
    assert np.mean(loads == BURST_LOAD) == pytest.approx(8 / 28, abs=0.03)
    with pytest.raises(ConfigError):
        make_load("chaotic", 10, rng)
