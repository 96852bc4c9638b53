"""The wheel as users get it: built once per test session, installed once into a fresh venv.

Nothing here uses the checkout's editable install: the wheel is built from the tree with
``pip wheel --no-deps``, installed into a venv of its own (no system site-packages), and every
command runs from a directory outside the checkout, so a missing package or data file fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def copy_tree(dest: Path) -> Path:
    """The files git would commit (tracked and not ignored) copied to ``dest``, as a clone has.

    Building from the checkout itself would reuse its ``build/`` folder, whose stale copies of
    moved or deleted modules end up in the wheel.
    """
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True, timeout=60,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def build_wheel(src: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` of the tree at ``src`` into ``out``; the one wheel it wrote.

    With build isolation, as docs/deployment.md tells users: the build backend comes from
    ``[build-system]``, not from whatever this venv happens to have.
    """
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
         str(src)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (wheel,) = out.glob("tandem-*.whl")
    return wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built once per test session from a clean copy of the tree."""
    src = copy_tree(tmp_path_factory.mktemp("src"))
    return build_wheel(src, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def wheel_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel and its dependencies (pip's cache makes it fast)."""
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", str(wheel)],
        check=True, timeout=600,
    )  # fmt: skip
    return env_dir


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working directory that is not the checkout and has no ``tandem`` folder in it."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    return work
