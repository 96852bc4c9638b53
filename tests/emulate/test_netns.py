"""Namespaces, veth and kernel rate shaping, for real (root and iproute2 needed, else skipped)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from tandem.emulate.links import KERNEL_FLOOR_BPS, NetnsLink
from tandem.emulate.netns import (
    NamespacePair,
    detect_capabilities,
    enter_netns,
    htb_args,
    remove_stale,
    tbf_args,
)
from tandem.emulate.relay import LinkState, ShapingRelay
from tandem.errors import ConfigError, TandemError

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("tc") is None, reason="needs iproute2 (ip, tc)"
    ),
]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def socket_in(ns: str, *args) -> socket.socket:
    """A socket that belongs to namespace ``ns`` (created by a thread inside it)."""
    box = []

    def make():
        with enter_netns(ns):
            box.append(socket.socket(*args))

    t = threading.Thread(target=make)
    t.start()
    t.join()
    return box[0]


def serve_in(ns: str, address: tuple[str, int], handle) -> socket.socket:
    """A listener in ``ns``; each connection is served by ``handle(conn)`` in its own thread."""
    listener = socket_in(ns)
    listener.bind(address)
    listener.listen()

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def echo_in(ns: str, address: tuple[str, int]) -> socket.socket:
    def pump(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    return serve_in(ns, address, pump)


def echo_time_s(ns: str, address: tuple[str, int], nbytes: int) -> float:
    sock = socket_in(ns)
    sock.settimeout(20)
    sock.connect(address)
    data = b"n" * nbytes
    start = time.monotonic()
    threading.Thread(target=sock.sendall, args=(data,), daemon=True).start()
    got = 0
    while got < nbytes:
        got += len(sock.recv(65536))
    sock.close()
    return time.monotonic() - start


def test_capabilities_are_detected_by_trying():
    caps = detect_capabilities()
    assert caps.root and caps.ip and caps.tc
    assert caps.netns and caps.veth and caps.tbf, caps.why_not
    assert caps.kernel_rate
    assert "netem=" in caps.summary()
    assert not {n for n in namespaces() if n.startswith(f"tandem-e-{os.getpid()}-")}


def test_pair_is_removed_on_exit_even_after_an_exception():
    before = namespaces()
    with pytest.raises(RuntimeError, match="boom"), NamespacePair() as pair:
        assert {pair.edge_ns, pair.cloud_ns} <= namespaces()
        raise RuntimeError("boom")
    assert namespaces() == before
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert pair.edge_if not in links


def test_two_pairs_at_once_have_distinct_names():
    with NamespacePair() as a, NamespacePair() as b:
        assert {a.edge_ns, a.cloud_ns}.isdisjoint({b.edge_ns, b.cloud_ns})
        assert a.edge_if != b.edge_if


@pytest.mark.parametrize("qdisc", ["htb", "tbf"])
def test_kernel_rate_limits_the_veth_and_changes_on_the_fly(qdisc):
    with NamespacePair(qdisc=qdisc) as pair:
        listener = echo_in(pair.cloud_ns, (pair.cloud_addr, 0))
        address = (pair.cloud_addr, listener.getsockname()[1])
        fast = echo_time_s(pair.edge_ns, address, 300_000)
        pair.set_rate(2e6, None)  # 300 kB up at 2 Mbit/s: 1.2 s
        slow = echo_time_s(pair.edge_ns, address, 300_000)
        pair.set_rate(None, 4e6)  # now the downlink limits: 0.6 s
        down = echo_time_s(pair.edge_ns, address, 300_000)
        listener.close()
    assert fast < 0.5, fast
    assert 1.2 * 0.9 <= slow <= 1.2 * 1.6, slow
    assert 0.6 * 0.9 <= down <= 0.6 * 1.8, down


def test_relay_inside_the_cloud_namespace_adds_delay_on_the_veth_path():
    with NamespacePair() as pair:
        listener = echo_in(pair.cloud_ns, ("127.0.0.1", 0))
        upstream = ("127.0.0.1", listener.getsockname()[1])
        with ShapingRelay(upstream, listen=(pair.cloud_addr, 0), netns=pair.cloud_ns) as relay:
            relay.set_state(LinkState(delay_ms=50))
            elapsed = echo_time_s(pair.edge_ns, (pair.cloud_addr, relay.port), 10)
        listener.close()
    assert 0.099 <= elapsed < 0.5, elapsed


def test_stale_namespaces_of_dead_runs_are_removed():
    dead_pid = 4_000_000  # above pid_max: no such process
    name = f"tandem-e-{dead_pid}-0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in remove_stale()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert name not in namespaces()


def test_bursts_are_a_millisecond_of_the_rate_and_one_frame_for_tbf():
    assert tbf_args(8000)[4] == "1600"
    assert int(tbf_args(1e9)[4]) == 125_000
    assert htb_args(8e5)[6] == "100" and htb_args(8e5)[8] == "100"
    assert htb_args(1e9)[6] == "125000"


def upload_time_s(ns: str, address: tuple[str, int], nbytes: int) -> float:
    """Send ``nbytes`` and wait for the peer's one-byte receipt (the uplink alone is timed)."""
    sock = socket_in(ns)
    sock.settimeout(20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect(address)
    time.sleep(0.3)  # idle: the bucket is full
    start = time.monotonic()
    sock.sendall(b"u" * nbytes)
    assert sock.recv(1) == b"k"
    elapsed = time.monotonic() - start
    sock.close()
    return elapsed


def receipt_in(ns: str, address: tuple[str, int], nbytes: int) -> socket.socket:
    """A listener in ``ns`` that answers one byte once it has read ``nbytes``."""

    def receipt(conn):
        with conn:
            got = 0
            while got < nbytes and (data := conn.recv(65536)):
                got += len(data)
            conn.sendall(b"k")

    return serve_in(ns, address, receipt)


@pytest.mark.parametrize("qdisc", ["htb", "tbf"])
def test_a_small_upload_pays_the_rate_not_line_speed(qdisc):
    """Segmentation offload once let a 4 kB request through htb in 0.2 ms at 0.5 Mbit/s."""
    nbytes = 4216  # a typical request: three frames
    with NamespacePair(qdisc=qdisc) as pair:
        assert not pair.segmentation_offload
        listener = receipt_in(pair.cloud_ns, (pair.cloud_addr, 0), nbytes)
        pair.set_rate(0.5e6, None)
        elapsed = upload_time_s(pair.edge_ns, (pair.cloud_addr, listener.getsockname()[1]), nbytes)
        listener.close()
    # a bucket lets the last frame go as soon as the one before is paid: all but one frame
    all_but_one = (nbytes - 1448) * 8 / 0.5e6
    assert all_but_one * 0.95 <= elapsed <= all_but_one * 1.5, elapsed


def test_kernel_and_relay_at_one_rate_make_a_fluid_link():
    """The bucket hands the last frame over at once; the relay's serializer charges its time:
    the last byte of 4,216 arrives at ~size / rate, as in the simulator."""
    nbytes = 4216
    with NamespacePair() as pair:
        listener = receipt_in(pair.cloud_ns, ("127.0.0.1", 0), nbytes)
        upstream = ("127.0.0.1", listener.getsockname()[1])
        with ShapingRelay(upstream, listen=(pair.cloud_addr, 0), netns=pair.cloud_ns) as relay:
            pair.set_rate(0.5e6, None)
            relay.set_state(LinkState(up_bps=0.5e6))
            elapsed = upload_time_s(pair.edge_ns, (pair.cloud_addr, relay.port), nbytes)
        listener.close()
    fluid = nbytes * 8 / 0.5e6  # 67 ms; with TCP/IP headers 70 ms
    assert fluid * 0.97 <= elapsed <= fluid * 1.3, elapsed


def test_a_near_outage_leaves_no_kernel_debt_behind():
    """One frame at 10 kbit/s once left htb 1.2 s in debt after the trace was fast again."""
    nbytes = 4216
    link = NetnsLink()
    try:
        listener = receipt_in(link.pair.cloud_ns, ("127.0.0.1", link.cloud_port), nbytes)
        sock = socket_in(link.pair.edge_ns)
        sock.settimeout(20)
        sock.connect((link.pair.cloud_addr, link.relay.port))
        link.set_state(LinkState(up_bps=10e3, down_bps=10e3))
        assert link.pair.rates == (KERNEL_FLOOR_BPS, KERNEL_FLOOR_BPS)
        start = time.monotonic()
        sock.sendall(b"u" * nbytes)
        time.sleep(0.1)  # 100 ms of the slow sample: 125 bytes cross
        link.set_state(LinkState(up_bps=20e6, down_bps=20e6))
        assert sock.recv(1) == b"k"
        elapsed = time.monotonic() - start
        sock.close()
        listener.close()
    finally:
        link.close()
    assert 0.1 <= elapsed < 0.13, elapsed  # the rest at 20 Mbit/s: ~2 ms


def test_rate_changes_go_through_one_tc_batch_per_namespace_and_errors_name_tc():
    with NamespacePair() as pair:
        batches = {ns: b.proc.pid for ns, b in pair._tc.items()}
        for k in range(20):
            pair.set_rate(1e6 + k * 1000, 2e6 + k * 1000)
        assert {ns: b.proc.pid for ns, b in pair._tc.items()} == batches  # no new processes
        shown = subprocess.run(
            ["tc", "-n", pair.edge_ns, "class", "show", "dev", pair.edge_if],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert "rate 1019Kbit" in shown, shown
        with pytest.raises(TandemError, match='failed: Cannot find device "nosuch"'):
            pair._tc[pair.edge_ns].change(["class", "change", "dev", "nosuch", "parent", "1:",
                                           "classid", "1:1", "htb", "rate", "1mbit"])  # fmt: skip
        pair.set_rate(3e6, None)  # the batch goes on after an error
        procs = [b.proc for b in pair._tc.values()]
    assert all(p.poll() is not None for p in procs)  # closed with the pair
    with NamespacePair(shape=False) as bare, pytest.raises(ConfigError, match="no rate qdiscs"):
        bare.set_rate(1e6, None)
