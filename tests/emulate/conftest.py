"""Real TCP peers on 127.0.0.1 for the relay tests: an echo server and a gRPC health server."""

from __future__ import annotations

import socket
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))

from sim_helpers import shared_traces_dir  # noqa: E402


class EchoServer:
    """Sends back every byte it receives, on every connection, until closed."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.address = self.sock.getsockname()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def echo_server():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def health_server():
    """A real gRPC server (grpc.health.v1) on 127.0.0.1:0; yields its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """The shared real traces (the simulator tests' rule: $TANDEM_TRACES or ../shared/traces)."""
    folder = shared_traces_dir()
    if not (folder / "index.csv").exists():
        pytest.skip(f"no shared traces at {folder} (set TANDEM_TRACES)")
    return folder
