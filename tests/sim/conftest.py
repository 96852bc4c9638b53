"""Shared fixtures for simulator tests: shipped profiles and a small synthetic trace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_helpers import synthetic_trace  # noqa: E402

from tandem.sim.profiles import load_profile, shipped_profile_path  # noqa: E402


@pytest.fixture(scope="session")
def device_profile():
    return load_profile(shipped_profile_path("device"))


@pytest.fixture(scope="session")
def cloud_profile():
    return load_profile(shipped_profile_path("cloud"))


@pytest.fixture(scope="session")
def trace():
    return synthetic_trace()
