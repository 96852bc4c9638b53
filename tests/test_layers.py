"""The layer table of DESIGN.md, enforced: every import edge in the shipped tree points down.

Walks every module's syntax tree (imports inside functions and ``TYPE_CHECKING`` blocks count:
they run too) and fails on any edge the table does not allow — the base package importing a
component, a component importing one above it, or anyone but the tests importing the entry
points. A two-way dependency starts as one such edge, so this test catches it on the day it is
written, not when the cycle first bites.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Folder → import name (pyproject.toml's ``package-dir``).
FOLDERS = {
    "tandem": "tandem",
    "runtime": "tandem.runtime",
    "policy": "tandem.policy",
    "edge": "tandem.edge",
    "cloud": "tandem.cloud",
    "sim": "tandem.sim",
    "emulate": "tandem.emulate",
    "cli": "tandem.cli",
}

BASE, V1 = "tandem", "tandem.v1"
COMPONENTS = ("runtime", "policy", "edge", "cloud", "sim", "emulate")
EVERYTHING_BELOW_CLI = {BASE, V1, *(f"tandem.{c}" for c in COMPONENTS)}

#: Layer → the layers it may import (its own included). Mirrors DESIGN.md's table.
ALLOWED = {
    BASE: {BASE, V1},
    V1: {V1},
    "tandem.runtime": {BASE, "tandem.runtime"},
    "tandem.policy": {BASE, "tandem.policy"},
    "tandem.edge": {BASE, V1, "tandem.runtime", "tandem.policy", "tandem.edge"},
    "tandem.cloud": {BASE, V1, "tandem.runtime", "tandem.cloud"},
    "tandem.sim": {BASE, "tandem.policy", "tandem.sim"},
    "tandem.emulate": EVERYTHING_BELOW_CLI,
    "tandem.cli": EVERYTHING_BELOW_CLI | {"tandem.cli"},
}

#: Edges DESIGN.md does not allow but the tree has on purpose today, each with its reason; a new
#: one needs a line here (and a reviewer), never a silent pass. (file, imported module) pairs.
EXCEPTIONS = {
    # The public API: ``tandem.EdgeClient`` and ``tandem.Seq2Seq``, loaded lazily by the
    # package's ``__getattr__`` on first use, so ``import tandem`` itself loads no component.
    ("tandem/__init__.py", "tandem.edge.client"),
    ("tandem/__init__.py", "tandem.runtime.seq2seq"),
    # The wire mapping knows both the codec's values and the protobuf messages; edge and cloud
    # share it. Its place (a layer between runtime and edge/cloud) is a DESIGN.md question.
    ("tandem/wire.py", "tandem.runtime.codec"),
}


def layer_of(module: str) -> str | None:
    """The layer a ``tandem`` module belongs to; None for third-party modules."""
    if module != "tandem" and not module.startswith("tandem."):
        return None
    parts = module.split(".")
    if len(parts) >= 2 and f"tandem.{parts[1]}" in ALLOWED:
        return f"tandem.{parts[1]}"
    return BASE


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    dotted = [FOLDERS[rel.parts[0]], *rel.parts[1:-1]]
    if rel.stem != "__init__":
        dotted.append(rel.stem)
    return ".".join(dotted)


def imported_modules(path: Path, module: str, known: set[str]) -> list[tuple[int, str]]:
    """Every (line, module) that ``path`` imports, relative imports resolved.

    ``from tandem import cli`` imports the module ``tandem.cli``, so a name that is one of the
    ``known`` modules counts as that module; any other name is an attribute of the package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                target = ".".join(
                    parts[: len(parts) - node.level + 1] + ([target] if target else [])
                )
            found.append((node.lineno, target))
            found += [
                (node.lineno, f"{target}.{alias.name}")
                for alias in node.names
                if f"{target}.{alias.name}" in known
            ]
    return found


def shipped_modules(root: Path) -> list[Path]:
    return sorted(
        p
        for folder in FOLDERS
        for p in (root / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def upward_edges(root: Path, paths: list[Path]) -> list[str]:
    """``path:line: layer imports module`` for every edge the table forbids."""
    names = {module_name(root, p): p for p in paths}
    known = set(names) | {f"tandem.{c}" for c in COMPONENTS} | {"tandem.cli", V1}
    bad = []
    for module, path in names.items():
        here = layer_of(module)
        for line, target in imported_modules(path, module, known):
            there = layer_of(target)
            rel = path.relative_to(root).as_posix()
            if there is not None and there not in ALLOWED[here] and (rel, target) not in EXCEPTIONS:
                bad.append(f"{path.relative_to(root)}:{line}: {here} imports {target}")
    return bad


def test_no_import_points_up_the_layer_table():
    assert upward_edges(ROOT, shipped_modules(ROOT)) == []


def test_only_tests_import_the_entry_points():
    scripts = [
        p
        for folder in ("bench", "tools", "scripts")
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    bad = []
    for path in scripts:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad += [
                f"{path.relative_to(ROOT)}:{node.lineno}: imports {n}"
                for n in names
                if n == "tandem.cli" or n.startswith("tandem.cli.")
            ]
    assert bad == []


@pytest.mark.parametrize(
    ("folder", "source", "edge"),
    [
        ("tandem", "from tandem.edge.agent import Agent\n", "tandem imports tandem.edge.agent"),
        ("tandem", "from tandem import cli\n", "tandem imports tandem.cli"),
        ("policy", "def f():\n    import tandem.runtime.codec\n", "imports tandem.runtime.codec"),
        ("emulate", "from tandem.cli.demo import run_demo\n", "imports tandem.cli.demo"),
        ("cloud", "from ..edge import agent\n", "tandem.cloud imports tandem.edge"),
    ],
)
def test_an_upward_edge_is_caught(tmp_path, folder, source, edge):
    path = tmp_path / folder / "probe.py"
    path.parent.mkdir()
    path.write_text(source)
    bad = upward_edges(tmp_path, [path])
    assert len(bad) == 1 and edge in bad[0]


def test_allowed_edges_pass(tmp_path):
    path = tmp_path / "edge" / "probe.py"
    path.parent.mkdir()
    path.write_text("from tandem import errors\nfrom tandem.v1 import decoder_pb2\nimport numpy\n")
    assert upward_edges(tmp_path, [path]) == []


def test_every_package_folder_is_walked():
    # A component added to pyproject.toml but not to FOLDERS would never be checked.
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir = config["tool"]["setuptools"]["package-dir"]
    assert {folder: name for name, folder in package_dir.items()} == FOLDERS
