"""The wheel holds every package folder of the tree and every file in them.

The packages are listed by hand in pyproject.toml (DESIGN.md: one import namespace, explicit
package-dir); this test is what keeps that list complete. It walks the tree, not pyproject, so a
new top-level component folder, a new subpackage or a new data file left out of the wheel fails
here instead of in a user's ``tandem``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.wheel

#: Top-level folders that are not part of the product (scripts, tests, manifests, docs).
NOT_SHIPPED = {"tests", "bench", "tools", "scripts", "docs", "deploy", "proto", "build", "dist"}

#: Folder → import name, for the folders whose name is not the import name's last part.
RENAMED = {"tandem": "tandem", "cli": "tandem.cli"}


def shipped_folders() -> dict[str, Path]:
    """Import name → folder, for every top-level folder that is a Python package."""
    found = {}
    for top in sorted(ROOT.iterdir()):
        if not top.is_dir() or top.name.startswith(".") or top.name in NOT_SHIPPED:
            continue
        if not (top / "__init__.py").exists():
            continue
        found[RENAMED.get(top.name, f"tandem.{top.name}")] = top
    return found


def files_on_disk() -> set[str]:
    """Paths inside the wheel that every file of every shipped folder should have."""
    want = set()
    for name, folder in shipped_folders().items():
        for path in folder.rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            rel = path.relative_to(folder).as_posix()
            want.add(f"{name.replace('.', '/')}/{rel}")
    return want


def test_every_top_level_package_is_found():
    # The walk itself must see the components DESIGN.md names, or the next test proves nothing.
    names = set(shipped_folders())
    assert {"tandem", "tandem.cli", "tandem.runtime", "tandem.edge", "tandem.cloud"} <= names


def test_the_wheel_has_every_package_and_file_on_disk(wheel):
    with zipfile.ZipFile(wheel) as zf:
        inside = {n for n in zf.namelist() if ".dist-info/" not in n}
    missing = sorted(files_on_disk() - inside)
    assert missing == [], f"left out of the wheel (pyproject.toml packages/package-data): {missing}"
    stale = sorted(inside - files_on_disk())
    assert stale == [], f"in the wheel but not in the tree (stale build output?): {stale}"


def test_the_wheel_declares_the_tandem_command(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert "tandem = tandem.cli:main" in text
