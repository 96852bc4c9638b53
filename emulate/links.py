"""Links: where the daemons run and what joins them — loopback plus relay, or namespaces.

Two ways to build the emulated link, one interface (``set_state``, ``start_cloud``,
``start_edge``, ``close``), so the runner does not care which it got:

- ``LoopbackLink`` (no root): cloud and agent on 127.0.0.1, the agent dialling a
  ``ShapingRelay`` that does everything — rate, delay, loss, partitions.
- ``NetnsLink`` (root, iproute2, htb or tbf): the agent in one namespace, the cloud and the
  relay in another, a veth pair between them. A kernel qdisc meters the rate of each
  direction; the relay, shaping at the same rate, times each byte's delivery as a fluid link
  would and adds delay, loss, partitions and outages (``NetnsLink.set_state``).

``choose_mode`` turns ``auto`` into one of them from the detected capabilities and says why.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tandem.emulate.netns import Capabilities, NamespacePair, detect_capabilities, enter_netns
from tandem.emulate.processes import CloudProcess, EdgeProcess, free_port, lower_priority
from tandem.emulate.relay import ShapingRelay
from tandem.emulate.shaping import LinkState
from tandem.errors import ConfigError, TandemError

log = logging.getLogger(__name__)

MODES = ("auto", "netns", "loopback")


def choose_mode(requested: str, caps: Capabilities | None = None) -> tuple[str, str, Capabilities]:
    """(mode, why, capabilities) for ``--mode``; ``netns`` without the means is an error."""
    if requested not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {requested!r}")
    caps = caps or detect_capabilities()
    if requested == "loopback":
        return "loopback", "asked for (--mode loopback)", caps
    if caps.kernel_rate:
        why = "root, network namespaces, veth and a rate qdisc (htb or tbf) available"
        if not caps.netem:
            why += "; no netem, so delay/loss/partitions go through the userspace relay"
        return "netns", why, caps
    if requested == "netns":
        raise ConfigError(f"--mode netns is not possible here: {caps.why_not} ({caps.summary()})")
    return "loopback", f"namespaces unavailable ({caps.why_not}): relay on 127.0.0.1", caps


class LoopbackLink:
    """Daemons on 127.0.0.1, every shaping in the relay."""

    mode = "loopback"

    def __init__(self, seed: int = 0) -> None:
        self.cloud_port = free_port()
        self.relay = ShapingRelay(("127.0.0.1", self.cloud_port), seed=seed)
        self.relay.start()
        self.cloud_address = f"127.0.0.1:{self.relay.port}"

    def set_state(self, state: LinkState) -> None:
        self.relay.set_state(state)

    def start_cloud(self, bundle: Path, workdir: Path, niceness: int = 0) -> CloudProcess:
        cloud = CloudProcess(bundle, self.cloud_port, workdir / "cloud.log")
        cloud.niceness = niceness
        cloud.start()
        return cloud

    def start_edge(self, config: dict[str, Any], workdir: Path) -> EdgeProcess:
        edge = EdgeProcess(config, workdir)
        edge.start()
        return edge

    def close(self) -> None:
        self.relay.stop()


class _InNamespace:
    """Mixin: spawn the daemon under ``ip netns exec NS`` (its own session, as the base does)."""

    prefix: list[str]

    def _spawn(self, argv: list[str]) -> None:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        try:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "tandem.cli", *argv],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log_file.close()
        lower_priority(self.proc.pid, self.niceness)  # `ip netns exec` execs it: same process


class _NetnsCloud(_InNamespace, CloudProcess):
    """The cloud inside its namespace; ready once its port accepts a connection there (the
    caller's gRPC threads live outside the namespace, so a plain socket checks it)."""

    def __init__(self, bundle: Path, port: int, log_path: Path, ns: str) -> None:
        super().__init__(bundle, port, log_path)
        self.ns = ns
        self.prefix = ["ip", "netns", "exec", ns]

    def start(self, timeout_s: float = 60.0) -> None:
        self._spawn(["cloud", "serve", "--bundle", str(self.bundle),
                     "--listen", f"127.0.0.1:{self.port}"])  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_running("cloud service")
            if self._accepts():
                return
            time.sleep(0.2)
        raise TandemError(f"cloud service did not listen in {timeout_s:.0f} s")

    def _accepts(self) -> bool:
        ok = []

        def probe() -> None:
            with enter_netns(self.ns), socket.socket() as s:
                s.settimeout(1.0)
                ok.append(s.connect_ex(("127.0.0.1", self.port)) == 0)

        t = threading.Thread(target=probe)
        t.start()
        t.join()
        return bool(ok and ok[0])


class _NetnsEdge(_InNamespace, EdgeProcess):
    """The agent inside its namespace; its local API is a Unix socket path, reachable from any
    namespace."""

    def __init__(self, config: dict[str, Any], workdir: Path, ns: str) -> None:
        super().__init__(config, workdir)
        self.prefix = ["ip", "netns", "exec", ns]


KERNEL_FLOOR_BPS = 1e6
"""The lowest rate given to a kernel qdisc. htb counts a packet's cost in time at the rate in
force when it leaves: one 1,514-byte frame sent at 10 kbit/s (a trace's near-outage sample)
left the class 1.2 s in debt, and that debt was still owed after the trace went back to
20 Mbit/s (requests stalled ~0.8 s where the simulator saw 100 ms of slow link). At 1 Mbit/s a
frame costs 12 ms. Below the floor the relay, shaping at the trace's rate, is the bottleneck."""


def _kernel_rate(trace_bps: float | None, last: float | None) -> float | None:
    """The qdisc rate for a trace rate: None stays unshaped, 0 keeps the last, others floored."""
    if trace_bps is None:
        return None
    if trace_bps == 0:
        return last
    return max(trace_bps, KERNEL_FLOOR_BPS)


class NetnsLink:
    """Agent and cloud in two namespaces over an htb/tbf-shaped veth, relay in the cloud's."""

    mode = "netns"

    def __init__(self, seed: int = 0) -> None:
        self.pair = NamespacePair(qdisc="htb" if detect_capabilities().htb else "tbf")
        self.pair.__enter__()
        try:
            self.cloud_port = 50051
            self.relay = ShapingRelay(
                ("127.0.0.1", self.cloud_port),
                listen=(self.pair.cloud_addr, 0),
                seed=seed,
                netns=self.pair.cloud_ns,
            )
            self.relay.start()
        except BaseException:
            self.pair.remove()
            raise
        self.cloud_address = f"{self.pair.cloud_addr}:{self.relay.port}"

    def set_state(self, state: LinkState) -> None:
        """The kernel meters the rate; the relay times delivery as the simulator's fluid link.

        Both shape at the trace's rate. The kernel's qdisc is the real bottleneck TCP sees
        (queueing, backpressure); the relay's serializer, fed at that rate, adds what a token
        bucket skips: it hands each packet over whole and at once, where a link takes
        size / rate to transmit it (without this a one-packet request crossed for free). The
        relay alone covers what a qdisc cannot do: rate 0 (an outage; the kernel keeps its last
        rate and the relay holds the bytes, then drains them at the new rate) and very low rates
        (the kernel never goes below ``KERNEL_FLOOR_BPS``: see there).
        """
        up = _kernel_rate(state.up_bps, self.pair.rates[0])
        down = _kernel_rate(state.down_bps, self.pair.rates[1])
        self.pair.set_rate(up, down)
        self.relay.set_state(state)

    def start_cloud(self, bundle: Path, workdir: Path, niceness: int = 0) -> CloudProcess:
        cloud = _NetnsCloud(bundle, self.cloud_port, workdir / "cloud.log", self.pair.cloud_ns)
        cloud.niceness = niceness
        cloud.start()
        return cloud

    def start_edge(self, config: dict[str, Any], workdir: Path) -> EdgeProcess:
        edge = _NetnsEdge(config, workdir, self.pair.edge_ns)
        edge.start()
        return edge

    def close(self) -> None:
        try:
            self.relay.stop()
        finally:
            self.pair.remove()


def open_link(mode: str, seed: int = 0) -> LoopbackLink | NetnsLink:
    """A started link of ``mode`` (``netns`` or ``loopback``)."""
    if mode == "netns":
        return NetnsLink(seed)
    if mode == "loopback":
        return LoopbackLink(seed)
    raise ConfigError(f"link mode must be netns or loopback, got {mode!r}")


__all__ = ["KERNEL_FLOOR_BPS", "MODES", "LoopbackLink", "NetnsLink", "choose_mode", "open_link"]
