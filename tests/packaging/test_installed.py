"""The installed wheel, run as users run it: ``tandem`` from a fresh venv, outside the checkout.

One session: ``--help`` lists every subcommand, ``generate`` answers with the shipped model, a
``tandem cloud serve`` on loopback, a ``tandem edge run`` pointed at it and ``tandem ask``
through that agent (routed to the cloud, so the answer crossed both daemons), and ``export``
without the ``export`` extra is a one-line error, not a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    """The environment without anything that could point Python back into the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return env


ENV = clean_env()


COMMANDS = (
    "generate",
    "export",
    "profile",
    "sim",
    "emulate",
    "chaos",
    "cloud",
    "edge",
    "ask",
    "demo",
)


def tandem(
    venv_dir: Path, cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv_dir / "bin" / "tandem"), *args],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(path_or_port, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}: {proc.communicate()[1]}"
        if isinstance(path_or_port, Path):
            if path_or_port.exists():
                return
        else:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", path_or_port)) == 0:
                    return
        time.sleep(0.1)
    raise AssertionError(f"{path_or_port} not ready in {timeout_s} s")


def test_the_package_is_the_installed_one(wheel_venv, outside):
    out = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", "import tandem, tandem.cli; print(tandem.__file__)"],
        cwd=outside, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(wheel_venv)), out.stdout


def test_help_lists_every_subcommand(wheel_venv, outside):
    out = tandem(wheel_venv, outside, "--help")
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert f"    {name} " in out.stdout, name


def test_python_m_tandem_cli_is_the_same_command(wheel_venv, outside):
    out = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-m", "tandem.cli", "--help"],
        cwd=outside, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == tandem(wheel_venv, outside, "--help").stdout


def test_generate_with_the_shipped_model(wheel_venv, outside):
    out = tandem(wheel_venv, outside, "generate", "12 7", "--target", "en")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "twelve, seven"


def test_export_without_its_extra_is_one_line(wheel_venv, outside):
    out = tandem(wheel_venv, outside, "export", "--hf", str(outside), "--out", str(outside / "b"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "tandem export: error: exporting needs the 'export' extra: pip install 'tandem[export]'"
    ]


def test_cloud_serve_edge_run_and_ask(wheel_venv, outside):
    port = free_port()
    cloud = subprocess.Popen(
        [str(wheel_venv / "bin" / "tandem"), "cloud", "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=outside, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    sock = outside / "edge.sock"
    config = {
        "socket": str(sock),
        "cloud": {"addresses": [f"127.0.0.1:{port}"]},
        "policy": {"policy": "always_cloud"},
        "metrics_port": 0,
    }
    (outside / "edge.yaml").write_text(yaml.safe_dump(config))
    edge = None
    try:
        wait_for(port, cloud)
        edge = subprocess.Popen(
            [str(wheel_venv / "bin" / "tandem"), "edge", "run", "--config", "edge.yaml"],
            cwd=outside, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(sock, edge)
        out = tandem(wheel_venv, outside, "ask", "12 7", "--target", "en", "--agent", str(sock))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "twelve, seven"
        assert "[cloud" in out.stderr, out.stderr
    finally:
        for proc in (edge, cloud):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in (edge, cloud):
            if proc is not None:
                assert proc.wait(timeout=30) == 0, proc.communicate()[1]
