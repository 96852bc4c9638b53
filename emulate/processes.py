"""The daemons as real child processes: ``tandem cloud serve`` and ``tandem edge run``.

The demo, the chaos scenario and the soak bench need the daemons users run, in processes of
their own: a cloud that can really be SIGKILLed (no ``finally`` runs, sockets reset), and
processes whose RSS, file descriptors and threads can be read from outside. Both start in a
session of their own, so a kill takes any helper they spawned with them, and both wait until
the daemon really answers before returning from ``start``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.edge.config import edge_config_from_dict
from tandem.errors import TandemError

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOUD_NICENESS = 10
"""How much lower the emulated cloud's CPU priority is than the device's, where the caller asks
(``_Child.niceness``). Why: in a deployment the device and the replica are different machines;
on one emulation host a replica decoding beside the agent (a HANDOFF race: both sides decode at
once) slows the agent's own decoding, which no deployment sees and the simulator rightly does
not model. With the replica yielding, the device decodes as fast as it would alone; the
replica still has every cycle the device leaves (all of them while the device waits for it)."""


def lower_priority(pid: int, niceness: int) -> None:
    """Make a child ``niceness`` steps nicer than us. Called right after the child is spawned,
    before its interpreter has started a thread: Linux keeps a nice value per thread, and the
    threads it starts later inherit its main thread's."""
    if niceness:
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + niceness)


class _Child:
    """A daemon child process: start in its own session, SIGKILL, or SIGTERM then wait."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.niceness = 0
        """How much lower than ours its CPU priority is (``CLOUD_NICENESS``); set before start."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: list[str]) -> None:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tandem.cli", *argv],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log_file.close()  # the child has its own copy of the descriptor
        lower_priority(self.proc.pid, self.niceness)

    def _check_running(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TandemError(f"{what} exited at start (status {self.proc.returncode}); "
                              f"see {self.log_path}")  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the whole session: a crash, not a shutdown."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (the daemon drains), SIGKILL if it is still there after ``timeout_s``."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


class CloudProcess(_Child):
    """``tandem cloud serve`` as a real child process, so it can really be killed."""

    def __init__(self, bundle: Path, port: int, log_path: Path) -> None:
        super().__init__(log_path)
        self.bundle, self.port = bundle, port

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the replica and return once its health service says SERVING."""
        self._spawn(
            ["cloud", "serve", "--bundle", str(self.bundle), "--listen", f"127.0.0.1:{self.port}"]
        )
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self._check_running("cloud service")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TandemError(f"cloud service did not become healthy in {timeout_s:.0f} s")


class EdgeProcess(_Child):
    """``tandem edge run`` as a real child process, configured by an ``edge.yaml`` mapping.

    The mapping is validated here first (``edge_config_from_dict``), so a bad scenario fails in
    the caller with the config error, not as a child that died at start.
    """

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        super().__init__(workdir / "edge.log")
        edge_config_from_dict(config, where="edge.yaml (generated)")
        if not config.get("socket"):
            raise TandemError("EdgeProcess needs config['socket']: apps reach the agent there")
        self.socket = str(config["socket"])
        self.config_path = workdir / "edge.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the agent and return once its local API accepts a connection."""
        self._spawn(["edge", "run", "--config", str(self.config_path)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_running("edge agent")
            if os.path.exists(self.socket):
                with grpc.insecure_channel(f"unix:{self.socket}") as channel:
                    try:
                        grpc.channel_ready_future(channel).result(timeout=1.0)
                        return
                    except grpc.FutureTimeoutError:
                        pass
            time.sleep(0.1)
        raise TandemError(f"edge agent did not open {self.socket} in {timeout_s:.0f} s")


__all__ = ["CLOUD_NICENESS", "CloudProcess", "EdgeProcess", "free_port", "lower_priority"]
