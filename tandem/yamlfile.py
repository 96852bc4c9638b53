"""Reading a YAML file, one way for every file a person writes: each problem names the file.

Configs (``edge.yaml``, ``cloud.yaml``, ``--policy-config``), profiles, token files and bundle
manifests are YAML written or edited by people. Each reader once caught its own subset of
what goes wrong — a missing file, bytes that are not UTF-8, a syntax error — and worded it its
own way; one caught only the first, so a typo in a device profile stopped the agent with a
YAML traceback. Here every such problem is the caller's ``TandemError`` (``ConfigError`` by
default), worded the same and naming what the file is for and where it is. What the document
*means* is the caller's to validate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tandem.errors import ConfigError, TandemError


def read_yaml(path: str | Path, what: str, error: type[TandemError] = ConfigError) -> Any:
    """The YAML document in ``path`` (None for an empty file).

    ``what`` says what the file is for (``"device profile"``): messages read
    ``"device profile /etc/tandem/device.yaml: not valid YAML: ..."``.
    """
    path = Path(path)
    where = f"{what} {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {exc}") from exc


def read_yaml_mapping(
    path: str | Path, what: str, error: type[TandemError] = ConfigError
) -> dict[str, Any]:
    """``read_yaml`` for files whose top level is a mapping of keys; an empty file is ``{}``."""
    data = read_yaml(path, what, error)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(
            f"{what} {Path(path)}: top level must be a mapping of keys, got {type(data).__name__}"
        )
    return data


__all__ = ["read_yaml", "read_yaml_mapping"]
