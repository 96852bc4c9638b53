"""SessionConfig: the ONNX Runtime options every part of a bundle gets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tandem.errors import ConfigError
from tandem.runtime.options import SessionConfig

CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _threads_when_confined_to(cores: list[int]) -> int:
    """The intra-op thread count a default SessionConfig gives in a process on ``cores``."""
    code = (
        "import os, sys\n"
        f"os.sched_setaffinity(0, {set(cores)!r})\n"
        "from tandem.runtime.options import SessionConfig\n"
        "print(SessionConfig().to_ort().intra_op_num_threads)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(len(CORES) < 2, reason="needs two usable cores to confine a process to one")
def test_default_threads_follow_the_cores_the_process_may_use():
    # ONNX Runtime would start one thread per physical core even on one allowed core.
    assert _threads_when_confined_to(CORES[:1]) == 1


def test_default_threads_are_onnx_runtimes_own_on_an_unconfined_process():
    if len(CORES) != (os.cpu_count() or 0):
        pytest.skip("this process is already confined to some cores")
    assert SessionConfig().to_ort().intra_op_num_threads == 0


def test_explicit_threads_win():
    assert SessionConfig(intra_op_threads=3).to_ort().intra_op_num_threads == 3


def test_negative_threads_are_refused():
    with pytest.raises(ConfigError, match="intra_op_threads"):
        SessionConfig(intra_op_threads=-1)
