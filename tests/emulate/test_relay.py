"""ShapingRelay over real sockets on 127.0.0.1: rate, delay, partitions, gRPC, counters.

Tolerances are wide (the test machine is shared and loaded); each assertion still fails if
the relay ignored the setting it checks.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.emulate.relay import LinkState, ShapingRelay
from tandem.emulate.trace_shaper import Partition, ShaperConfig, TraceShaper
from tandem.errors import ConfigError
from tandem.sim.trace import parse_trace


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def round_trip_s(sock: socket.socket, payload: bytes = b"p") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    recv_exactly(sock, len(payload))
    return time.monotonic() - start


def test_unshaped_relay_passes_bytes_both_ways_and_counts_them(echo_server):
    with (
        ShapingRelay(echo_server.address) as relay,
        socket.create_connection(("127.0.0.1", relay.port)) as sock,
    ):
        data = bytes(range(256)) * 400
        sock.sendall(data)
        assert recv_exactly(sock, len(data)) == data
        counters = relay.counters()
        assert counters.bytes_up == counters.bytes_down == len(data)
        assert counters.connections == 1


def test_delay_delays_each_direction(echo_server):
    with (
        ShapingRelay(echo_server.address, state=LinkState(delay_ms=60)) as relay,
        socket.create_connection(("127.0.0.1", relay.port)) as sock,
    ):
        rtts = [round_trip_s(sock) for _ in range(5)]
        assert min(rtts) >= 0.118  # 60 ms up + 60 ms down
        assert sorted(rtts)[2] < 0.3
        relay.set_state(LinkState())
        assert min(round_trip_s(sock) for _ in range(5)) < 0.06


def test_rate_limit_limits_throughput(echo_server):
    """400 kB at 2 Mbit/s up takes 1.6 s; the unshaped run takes a small part of that."""
    data = b"r" * 400_000
    with (
        ShapingRelay(echo_server.address, state=LinkState(up_bps=2e6)) as relay,
        socket.create_connection(("127.0.0.1", relay.port)) as sock,
    ):
        start = time.monotonic()
        threading.Thread(target=sock.sendall, args=(data,), daemon=True).start()
        recv_exactly(sock, len(data))
        elapsed = time.monotonic() - start
    assert 1.6 * 0.95 <= elapsed <= 1.6 * 1.5, elapsed


def test_rate_change_applies_to_a_transfer_under_way(echo_server):
    """First 0.5 s at 1 Mbit/s (62.5 kB), the other 187.5 kB at 3 Mbit/s (0.5 s): ~1.0 s."""
    data = b"c" * 250_000
    with (
        ShapingRelay(echo_server.address, state=LinkState(down_bps=1e6)) as relay,
        socket.create_connection(("127.0.0.1", relay.port)) as sock,
    ):
        start = time.monotonic()
        threading.Thread(target=sock.sendall, args=(data,), daemon=True).start()
        timer = threading.Timer(0.5, relay.set_state, args=(LinkState(down_bps=3e6),))
        timer.start()
        recv_exactly(sock, len(data))
        elapsed = time.monotonic() - start
        timer.join()
    assert 0.9 <= elapsed <= 1.4, elapsed  # all at 1 Mbit/s would take 2 s


def test_partition_stalls_then_heals_without_losing_bytes(echo_server):
    with (
        ShapingRelay(echo_server.address, state=LinkState(delay_ms=10)) as relay,
        socket.create_connection(("127.0.0.1", relay.port)) as sock,
    ):
        assert recv_exactly(sock, 0) == b""
        round_trip_s(sock)
        relay.set_state(LinkState(delay_ms=10, partitioned=True))
        data = bytes(range(256)) * 200
        sock.sendall(data)
        sock.settimeout(0.6)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        # A new connection is accepted during the partition, but nothing flows on it.
        with socket.create_connection(("127.0.0.1", relay.port), timeout=0.6) as other:
            other.sendall(b"hello")
            with pytest.raises(TimeoutError):
                other.recv(1)
            relay.set_state(LinkState(delay_ms=10))
            other.settimeout(5.0)
            assert recv_exactly(other, 5) == b"hello"
        sock.settimeout(5.0)
        assert recv_exactly(sock, len(data)) == data


def test_grpc_works_through_the_relay_and_feels_its_delay(health_server):
    with (
        ShapingRelay(("127.0.0.1", health_server), state=LinkState(delay_ms=40)) as relay,
        grpc.insecure_channel(f"127.0.0.1:{relay.port}") as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        stub.Check(request, timeout=5.0)  # connect
        start = time.monotonic()
        reply = stub.Check(request, timeout=5.0)
        elapsed = time.monotonic() - start
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert elapsed >= 0.078, elapsed
        relay.set_state(LinkState(partitioned=True))
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(request, timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        relay.set_state(LinkState())
        assert stub.Check(request, timeout=5.0).status == reply.status


def test_refused_upstream_closes_the_client_connection():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()  # bound, not listening: connections are refused
        with (
            ShapingRelay(dead) as relay,
            socket.create_connection(("127.0.0.1", relay.port), timeout=5.0) as sock,
        ):
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
            assert relay.counters().connections == 1


def test_set_state_rejects_what_is_not_a_link_state(echo_server):
    relay = ShapingRelay(echo_server.address)
    with pytest.raises(ConfigError, match="must be a LinkState, got dict"):
        relay.set_state({"delay_ms": 5})
    assert relay.state == LinkState()
    relay.stop()  # never started: a no-op


def test_relay_cannot_listen_on_a_taken_port(echo_server):
    with pytest.raises(ConfigError, match="relay cannot listen on 127.0.0.1"):
        ShapingRelay(echo_server.address, listen=echo_server.address).start()


def test_drop_connections_resets_both_sides(echo_server):
    with ShapingRelay(echo_server.address) as relay:
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5.0)
        round_trip_s(sock)
        assert relay.drop_connections() == 1
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(20):
                sock.sendall(b"x")
                if sock.recv(1) == b"":
                    raise ConnectionError("closed")
                time.sleep(0.05)
        sock.close()


def test_trace_shaper_drives_a_relay_in_real_time(echo_server):
    """A 0.1 s trace: 0.8 Mbit/s for 0.3 s, then 8 Mbit/s; with a partition at 0.5-0.7 s."""
    rows = ["t_s,bandwidth_mbps"] + [f"{k / 10},{0.8 if k < 3 else 8.0}" for k in range(20)]
    trace = parse_trace("\n".join(rows) + "\n", "steps", last_row_hold_s=0.1)
    cfg = ShaperConfig(base_rtt_ms=20, partitions=(Partition(0.5, 0.2),))
    with ShapingRelay(echo_server.address) as relay:
        seen = []
        with TraceShaper(relay, trace, cfg) as shaper:
            for _ in range(8):
                seen.append((round(shaper.trace_time(), 2), relay.state))
                time.sleep(0.1)
        assert shaper.ticks >= 7
    slow = [s for t, s in seen if t < 0.25]
    fast = [s for t, s in seen if 0.35 < t < 0.45 or t > 0.75]
    cut = [s for t, s in seen if 0.55 < t < 0.65]
    assert slow and all(s.up_bps == pytest.approx(0.8e6) and s.delay_ms == 10 for s in slow)
    assert fast and all(s.up_bps == pytest.approx(8e6) and not s.partitioned for s in fast)
    assert cut and all(s.partitioned for s in cut)
