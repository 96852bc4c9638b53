"""Profile files: read a ``tandem-profile/1`` YAML (shipped or given) into a ``Profile``.

The policy's ``Profile.from_dict`` is pure; this is the file-reading shell around it for the
simulator and the CLI. The shipped profiles live in ``tandem/profiles/`` (package data):
``device.yaml`` for the device (before the device-speed factor) and ``cloud.yaml`` for the
cloud host.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from tandem.policy import Profile
from tandem.yamlfile import read_yaml

log = logging.getLogger(__name__)


def shipped_profile_path(name: str) -> Path:
    """Path of a shipped profile, ``device`` or ``cloud``."""
    return Path(str(resources.files("tandem") / "profiles" / f"{name}.yaml"))


def load_profile(path: Path | str) -> Profile:
    """Read and validate one profile file; every problem is a ``ConfigError`` naming the file."""
    path = Path(path)
    return Profile.from_dict(read_yaml(path, "profile"), where=str(path.name))
