"""Where the shipped model bundles and profiles live inside the installed package.

They are package data, so ``pip install .`` (or the wheel) carries them and every command works
with no argument and no download.
"""

from __future__ import annotations

from pathlib import Path

from tandem.errors import BundleError

PACKAGE_DIR = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE_DIR / "models"
PROFILES_DIR = PACKAGE_DIR / "profiles"
DEFAULT_MODEL = "verbalizer"


def bundle_path(name_or_path: str | Path | None = None) -> Path:
    """A bundle directory: an explicit path, a shipped bundle's name, or the default model."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return candidate
    shipped = MODELS_DIR / str(name_or_path)
    if shipped.is_dir():
        return shipped
    available = (
        sorted(p.name for p in MODELS_DIR.glob("*") if p.is_dir()) if MODELS_DIR.is_dir() else []
    )
    raise BundleError(
        f"no model bundle at {name_or_path!r} (not a directory, not a shipped model; "
        f"shipped: {', '.join(available) or 'none'})"
    )
