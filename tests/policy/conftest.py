"""Shared fixtures: the shipped profiles, parsed the way the agent and the simulator parse them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tandem.policy import Profile

PROFILES = Path(__file__).resolve().parents[2] / "tandem" / "profiles"
DEVICE_SPEED_FACTOR = 5.0
"""The simulator's default device is five times slower than the profiled host."""


@pytest.fixture(scope="session")
def device():
    data = yaml.safe_load((PROFILES / "device.yaml").read_text())
    return Profile.from_dict(data, "device.yaml").scaled(DEVICE_SPEED_FACTOR)


@pytest.fixture(scope="session")
def cloud():
    return Profile.from_dict(yaml.safe_load((PROFILES / "cloud.yaml").read_text()), "cloud.yaml")
