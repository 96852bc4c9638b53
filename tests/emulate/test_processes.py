"""The daemons' child processes: a lowered CPU priority reaches every thread they start."""

from __future__ import annotations

import os
import subprocess
import sys

from tandem.emulate.processes import lower_priority

THREAD_NICE = """
import os, sys, threading
sys.stdin.readline()  # started; the parent lowers our priority meanwhile
seen = []
t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
t.start(); t.join()
print(os.getpriority(os.PRIO_PROCESS, 0), seen[0])
"""


def test_a_lowered_priority_reaches_the_threads_the_child_starts_later():
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    proc = subprocess.Popen(
        [sys.executable, "-c", THREAD_NICE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lower_priority(proc.pid, 7)
    out, _ = proc.communicate("go\n", timeout=30)
    main, thread = (int(v) for v in out.split())
    assert main == min(19, ours + 7)
    assert thread == main


def test_zero_niceness_leaves_the_child_alone():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        lower_priority(proc.pid, 0)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        proc.kill()
        proc.wait()
