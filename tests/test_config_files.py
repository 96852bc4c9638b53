"""Hostile config files through the real commands: one line on stderr, exit status 2.

``tandem cloud serve --config F --check`` and ``tandem edge run --config F`` are what an
operator runs; a config file can come from anyone who can write a ConfigMap or a device's
disk. Each file below once crashed, hung or flooded the terminal (a RecursionError of ~3,000
lines, an alias bomb that ran 42 s into MemoryError, an 8 MB error line, TypeError tracebacks).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from yaml_bombs import alias_bomb, long_value

HOSTILE = {
    "alias-bomb": (alias_bomb(), "refused: more than 100000 nodes"),
    "deep-nesting": ("listen: " + "[" * 20_000 + "\n", "refused: nested deeper than 64 levels"),
    "huge-file": ("#" * (2 << 20) + "\n", "larger than"),
    "not-a-mapping": ("- a\n- b\n", "top level must be a mapping"),
    "number-key": ("5: x\n", "unknown key 5"),
}
EDGE_ONLY = {
    "long-value": (long_value("socket"), "edge.yaml: socket must be a string, got ['xxx"),
    "socket-number": ("socket: 5\n", "edge.yaml: socket must be a string, got 5"),
    "tcp-number": ("tcp: 5\n", "edge.yaml: tcp must be a 'HOST:PORT' string, got 5"),
    "bundle-number": ("bundle: 5\n", "edge.yaml: bundle must be a string, got 5"),
    "cloud-list": ("cloud: [1]\n", "edge.yaml: cloud must be a mapping of keys, got [1]"),
}
CLOUD_ONLY = {
    "long-value": (long_value("listen"), "cloud.yaml: listen must be a 'HOST:PORT' string, got"),
    "listen-number": ("listen: 5\n", "cloud.yaml: listen must be a 'HOST:PORT' string, got 5"),
    "typo": ("scheduler: {max_btach: 4}\n", "did you mean scheduler.max_batch?"),
}
COMMANDS = {
    "edge": ("edge", "run", "--config"),
    "cloud": ("cloud", "serve", "--check", "--config"),
}


def run_with(command: str, tmp_path, content: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{command}.yaml"
    path.write_text(content, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *COMMANDS[command], str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "content", "words"),
    [
        pytest.param(command, content, words, id=f"{command}-{name}")
        for command in COMMANDS
        for name, (content, words) in {
            **HOSTILE,
            **(EDGE_ONLY if command == "edge" else CLOUD_ONLY),
        }.items()
    ],
)
def test_a_hostile_config_is_one_line_and_exit_status_2(command, content, words, tmp_path):
    result = run_with(command, tmp_path, content)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) < 500, result.stderr[:2000]
    assert lines[0].startswith(f"tandem {command}: error: ") and words in lines[0]
    assert f"{command}.yaml" in lines[0], "the message names the file"
    assert result.stdout == ""
