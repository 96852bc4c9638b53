"""The committed tandem.v1 stubs are exactly what scripts/gen_protos.py generates.

This is the CI gate for "never hand-edited, never stale". The failing case runs on a copy of
proto/ and the stubs in a temporary directory, never on the repository itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_protos.py"


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_repo_part(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "tandem" / "v1", tmp_path / "tandem" / "v1")
    return tmp_path


def test_committed_stubs_are_fresh() -> None:
    result = run_check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_with_a_diff_when_a_stub_is_edited(tmp_path: Path) -> None:
    root = copy_repo_part(tmp_path)
    stub = root / "tandem" / "v1" / "decoder_pb2_grpc.py"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    result = run_check(root)
    assert result.returncode == 1
    assert "tandem/v1/decoder_pb2_grpc.py (committed)" in result.stdout
    assert "-# edited by hand" in result.stdout
    assert "stale" in result.stderr


def test_check_fails_when_a_proto_changes_without_regenerating(tmp_path: Path) -> None:
    root = copy_repo_part(tmp_path)
    proto = root / "proto" / "tandem" / "v1" / "edge.proto"
    proto.write_text(proto.read_text() + "\nmessage Unregenerated {}\n")
    result = run_check(root)
    assert result.returncode == 1
    assert "Unregenerated" in result.stdout


def test_check_fails_on_a_stub_without_a_proto(tmp_path: Path) -> None:
    root = copy_repo_part(tmp_path)
    (root / "proto" / "tandem" / "v1" / "edge.proto").unlink()
    result = run_check(root)
    assert result.returncode == 1
    assert "tandem/v1/edge_pb2.py (committed)" in result.stdout
