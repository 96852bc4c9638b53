"""Generate the ``tandem.v1`` stubs from ``proto/tandem/v1/*.proto``, or check they are fresh.

The stubs are committed so that ``pip install tandem`` needs no protoc; this script is the only
way they are written. protoc runs with ``-Iproto`` and output to the repository root, so the
generated modules land in ``tandem/v1/`` and their imports (``from tandem.v1 import
decoder_pb2``) resolve as they are: no post-processing, nothing edited by hand.

The generated code embeds the protoc and grpcio versions it came from, so regenerating with
another grpcio-tools changes the stubs; the dev extra of ``pyproject.toml`` pins grpcio-tools
for that reason.

Usage (from anywhere)::

    python scripts/gen_protos.py           # regenerate tandem/v1/*_pb2*.py{,i}
    python scripts/gen_protos.py --check   # exit 1 with a diff if the committed stubs are stale
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import importlib.resources
import logging
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PROTO_PACKAGE = Path("tandem") / "v1"
"""Where the .proto files live under ``proto/`` and, equally, where stubs live under the root."""

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(root: Path) -> list[Path]:
    """The sources, relative to ``root/proto`` (protoc records these paths in the stubs)."""
    base = root / "proto"
    return sorted(p.relative_to(base) for p in (base / PROTO_PACKAGE).glob("*.proto"))


def run_protoc(root: Path, out_dir: Path) -> None:
    """Run protoc in-process, writing ``out_dir/tandem/v1/*``; raise on any protoc error."""
    from grpc_tools import protoc  # dev-only dependency: import it only when generating

    sources = proto_files(root)
    if not sources:
        raise SystemExit(f"no .proto files under {root / 'proto' / PROTO_PACKAGE}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{root / 'proto'}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(root / "proto" / s) for s in sources),
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")


def generated_files(tree: Path) -> dict[str, str]:
    """Generated stub files under ``tree/tandem/v1``, by file name, with their text."""
    folder = tree / PROTO_PACKAGE
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def stale_diff(root: Path) -> str:
    """A unified diff from the committed stubs to freshly generated ones; empty when fresh.

    Stubs without a .proto (a source was deleted or renamed) count as stale too.
    """
    with tempfile.TemporaryDirectory(prefix="tandem-protos-") as tmp:
        (Path(tmp) / PROTO_PACKAGE).mkdir(parents=True)
        run_protoc(root, Path(tmp))
        fresh = generated_files(Path(tmp))
    committed = generated_files(root)
    chunks: list[str] = []
    for name in sorted(fresh.keys() | committed.keys()):
        path = f"{PROTO_PACKAGE.as_posix()}/{name}"
        old = committed.get(name, "")
        new = fresh.get(name, "")
        if old != new:
            chunks.extend(
                difflib.unified_diff(
                    old.splitlines(keepends=True),
                    new.splitlines(keepends=True),
                    fromfile=f"{path} (committed)" if name in committed else "/dev/null",
                    tofile=f"{path} (generated)" if name in fresh else "/dev/null",
                )
            )
    return "".join(chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and fail with a diff if the stubs differ",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="repository root holding proto/ and tandem/v1/ (default: this script's repository)",
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()

    if args.check:
        diff = stale_diff(root)
        if diff:
            sys.stdout.write(diff)
            tools = importlib.metadata.version("grpcio-tools")
            sys.stderr.write(
                f"tandem/v1 stubs are stale (compared with grpcio-tools {tools}): "
                "run `python scripts/gen_protos.py` with the grpcio-tools pinned in "
                "pyproject.toml and commit the result with the .proto change\n"
            )
            return 1
        return 0

    run_protoc(root, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
