"""Network namespaces: two namespaces joined by a veth pair, the rate shaped by kernel qdiscs.

``detect_capabilities`` says what this machine allows (root, iproute2, namespaces, veth, the
``tbf``/``htb``/``netem`` qdiscs) by trying each in a throwaway namespace; the emulator reports
it and picks its mode from it. ``NamespacePair`` builds the emulated link::

    [edge ns]  agent ── veth (tbf: uplink rate) ═══ veth (tbf: downlink rate) ── relay ── cloud  [cloud ns]

The agent side's egress (uplink) and ingress (the cloud end's egress: downlink) are each
shaped by an ``htb`` class whose rate ``set_rate`` changes with ``tc class change`` — htb
because changing a tbf (``tc qdisc change``) replaces its queue and drops the packets in it,
which TCP pays for with a 200 ms retransmission timeout on every trace step; a plain ``tbf``
is the fallback where the kernel has no htb. Kernels
without ``netem`` cannot delay or drop, so delay, loss, partitions and zero-rate stalls are
done by the userspace ``ShapingRelay``, which runs inside the cloud namespace
(``enter_netns``: only the relay's thread moves there).

Everything is named after this process (``tandem-e-<pid>-<k>``), so parallel runs never
collide, and removed on exit — exceptions and Ctrl-C included; namespaces left by a killed
run are removed by the next one (``remove_stale``), since a deleted namespace takes its veth
end with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tandem.errors import ConfigError, TandemError

log = logging.getLogger(__name__)

PREFIX = "tandem-"
EDGE_ADDR = "10.77.0.2"
CLOUD_ADDR = "10.77.0.1"
CLONE_NEWNET = 0x40000000
MTU_BYTES = 1500
TBF_LATENCY_MS = 1000
"""Queueing delay a tbf may build before it drops: a deep, cellular-like buffer."""
UNSHAPED_BPS = 10e9
"""The rate a tbf is given for an unshaped direction."""

_counter = itertools.count()


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=10)


@dataclass(frozen=True)
class Capabilities:
    """What the machine allows, each found by trying it."""

    root: bool
    ip: bool
    tc: bool
    netns: bool
    veth: bool
    tbf: bool
    htb: bool
    netem: bool
    why_not: str = ""
    """The first thing that failed, for the user (empty when namespaces work)."""

    @property
    def kernel_rate(self) -> bool:
        """Namespaces, veth and a rate qdisc: the ``netns`` mode can run."""
        return self.netns and self.veth and (self.htb or self.tbf)

    def summary(self) -> str:
        flags = ("root", "ip", "tc", "netns", "veth", "tbf", "htb", "netem")
        return " ".join(f"{name}={'yes' if getattr(self, name) else 'no'}" for name in flags)


def detect_capabilities() -> Capabilities:
    """Try root, iproute2, a namespace pair, a veth, and each qdisc; never raises."""
    root = os.geteuid() == 0
    ip = shutil.which("ip") is not None
    tc = shutil.which("tc") is not None
    if not root:
        return Capabilities(root, ip, tc, False, False, False, False, False, "not root")
    if not (ip and tc):
        return Capabilities(root, ip, tc, False, False, False, False, False, "no iproute2 (ip/tc)")
    pair = NamespacePair(shape=False)
    try:
        pair.create()
    except TandemError as exc:
        pair.remove()
        netns = "netns" not in str(exc)
        return Capabilities(root, ip, tc, netns, False, False, False, False, str(exc))
    try:
        found = {}
        for kind, args in (
            ("tbf", ["tbf", "rate", "1mbit", "burst", "3000", "latency", "100ms"]),
            ("htb", ["htb", "default", "1"]),
            ("netem", ["netem", "delay", "1ms"]),
        ):
            done = _run("tc", "-n", pair.edge_ns, "qdisc", "replace", "dev", pair.edge_if,
                        "root", *args, check=False)  # fmt: skip
            found[kind] = done.returncode == 0
        why = "" if found["tbf"] or found["htb"] else "no tbf or htb qdisc in this kernel"
        return Capabilities(
            root, ip, tc, True, True, found["tbf"], found["htb"], found["netem"], why
        )
    finally:
        pair.remove()


def remove_stale() -> list[str]:
    """Delete namespaces left by tandem runs whose process is gone; returns their names."""
    done = _run("ip", "netns", "list", check=False)
    removed = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if not name.startswith(PREFIX) or len(parts) != 4 or not parts[2].isdigit():
            continue
        if int(parts[2]) == os.getpid() or os.path.exists(f"/proc/{parts[2]}"):
            continue
        if _run("ip", "netns", "del", name, check=False).returncode == 0:
            removed.append(name)
    if removed:
        log.info("removed stale namespaces", extra={"names": ",".join(removed)})
    return removed


def _burst_bytes(rate_bps: float, qdisc: str = "tbf") -> int:
    """A token-bucket burst as small as works: 1 ms of the rate, and for tbf at least one full
    frame (MTU + Ethernet header, with a margin: tbf drops a packet larger than its bucket).

    Why small: the simulator (and a real radio link) serializes every byte at the trace's
    rate; a burst lets a small request through at line rate, and two MTUs of it made a 4 KB
    upload about 5 ms faster than the same trace in the simulator at cellular rates. htb needs
    no frame-sized bucket: it sends a packet whenever its bucket is not in debt and lets the
    packet's size run the bucket negative, so one packet is its burst whatever the setting.
    """
    floor = MTU_BYTES + 100 if qdisc == "tbf" else 1
    return max(floor, int(rate_bps / 8 * 0.001))


def tbf_args(rate_bps: float) -> list[str]:
    """tbf parameters for ``rate_bps`` (burst: ``_burst_bytes``)."""
    burst = _burst_bytes(rate_bps, "tbf")
    return ["tbf", "rate", f"{max(int(rate_bps), 8)}bit", "burst", str(burst),
            "latency", f"{TBF_LATENCY_MS}ms"]  # fmt: skip


def htb_args(rate_bps: float) -> list[str]:
    """htb class parameters for ``rate_bps`` (ceil = rate: no borrowing; bursts: 1 ms)."""
    rate = f"{max(int(rate_bps), 8)}bit"
    burst = str(_burst_bytes(rate_bps, "htb"))
    return ["htb", "rate", rate, "ceil", rate, "burst", burst, "cburst", burst]


class TcBatch:
    """One long-lived ``tc -n NS -force -batch -``: qdisc changes without a fork and exec each.

    Why: a trace changes the rate every 100 ms in both directions, and two ``tc`` processes per
    tick took 3.4 ms and two fork/execs of CPU — taken from the daemons being measured, on the
    same cores (on 2 cores it slowed local requests during trace replays by 10-30 % against
    the calibration on a constant link). tc reads one command per line as it arrives and flushes
    what a ``show`` prints, so each change is followed by a ``show`` of the same device: its
    output says tc is done, and whatever tc wrote to stderr before it is the change's error.
    """

    def __init__(self, ns: str, show: list[str]) -> None:
        self.ns = ns
        self.show = " ".join(show)
        self.proc = subprocess.Popen(
            ["tc", "-n", ns, "-force", "-batch", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def change(self, argv: list[str], timeout_s: float = 5.0) -> None:
        """Run one tc command (``argv`` without ``tc``); raises TandemError with tc's words."""
        if self.proc.poll() is not None:
            raise TandemError(f"tc batch in {self.ns} exited with status {self.proc.returncode}")
        self._read(self.proc.stdout, 0.0)  # nothing stale may pass for this change's answer
        self.proc.stdin.write(f"{' '.join(argv)}\n{self.show}\n".encode())
        self.proc.stdin.flush()
        if not self._read(self.proc.stdout, timeout_s).endswith(b"\n"):
            raise TandemError(f"tc batch in {self.ns} did not answer in {timeout_s:.0f} s")
        said = self._read(self.proc.stderr, 0.0).decode(errors="replace").strip()
        if "Command failed" in said:  # what tc -batch prints after a command's own error
            error = "; ".join(ln for ln in said.splitlines() if not ln.startswith("Command failed"))
            raise TandemError(f"tc {' '.join(argv)} (in {self.ns}) failed: {error}")
        if said:  # warnings, e.g. htb's "quantum of class ... is big" at line rate
            log.debug("tc warning", extra={"ns": self.ns, "said": said})

    @staticmethod
    def _read(stream, timeout_s: float) -> bytes:
        """What ``stream`` holds now, waiting up to ``timeout_s`` for a complete line."""
        out = b""
        deadline = time.monotonic() + timeout_s
        while True:
            wait = max(0.0, deadline - time.monotonic()) if not out.endswith(b"\n") else 0.0
            ready, _, _ = select.select([stream], [], [], wait)
            if not ready:
                return out
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return out
            out += chunk

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


class NamespacePair:
    """Two namespaces and a veth pair between them; ``with`` creates and always removes them."""

    def __init__(self, shape: bool = True, qdisc: str = "htb") -> None:
        if qdisc not in ("htb", "tbf"):
            raise ConfigError(f"rate qdisc must be htb or tbf, got {qdisc!r}")
        k = next(_counter)
        pid = os.getpid()
        self.edge_ns = f"{PREFIX}e-{pid}-{k}"
        self.cloud_ns = f"{PREFIX}c-{pid}-{k}"
        self.edge_if = f"te{pid % 100000}x{k}"[:15]
        self.cloud_if = f"tc{pid % 100000}x{k}"[:15]
        self.edge_addr, self.cloud_addr = EDGE_ADDR, CLOUD_ADDR
        self.shape = shape
        self.qdisc = qdisc
        self.rates: tuple[float | None, float | None] = (None, None)
        self._tc: dict[str, TcBatch] = {}  # namespace -> its tc batch, once shaped
        self.segmentation_offload = False
        """True where ``gso_max_segs 1`` was refused (packets may stand for many frames)."""
        self._created: list[str] = []

    def _step(self, what: str, *argv: str) -> None:
        done = _run(*argv, check=False)
        if done.returncode != 0:
            raise TandemError(f"{what} failed: {' '.join(argv)}: {done.stderr.strip()}")

    def create(self) -> NamespacePair:
        for ns in (self.edge_ns, self.cloud_ns):
            self._step("netns", "ip", "netns", "add", ns)
            self._created.append(ns)
        self._step("veth", "ip", "link", "add", self.edge_if, "type", "veth",
                   "peer", "name", self.cloud_if)  # fmt: skip
        for ns, dev, addr in (
            (self.edge_ns, self.edge_if, self.edge_addr),
            (self.cloud_ns, self.cloud_if, self.cloud_addr),
        ):
            self._step("veth", "ip", "link", "set", dev, "netns", ns)
            self._step("address", "ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            self._step("link up", "ip", "-n", ns, "link", "set", dev, "up")
            self._step("link up", "ip", "-n", ns, "link", "set", "lo", "up")
            self._one_frame_per_packet(ns, dev)
        if self.shape:
            for ns, dev in ((self.edge_ns, self.edge_if), (self.cloud_ns, self.cloud_if)):
                if self.qdisc == "tbf":
                    self._step("tbf", "tc", "-n", ns, "qdisc", "add", "dev", dev, "root",
                               *tbf_args(UNSHAPED_BPS))  # fmt: skip
                    continue
                self._step("htb", "tc", "-n", ns, "qdisc", "add", "dev", dev, "root",
                           "handle", "1:", "htb", "default", "1")  # fmt: skip
                self._step("htb", "tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:",
                           "classid", "1:1", *htb_args(UNSHAPED_BPS))  # fmt: skip
            for ns, dev in ((self.edge_ns, self.edge_if), (self.cloud_ns, self.cloud_if)):
                show = ["qdisc", "show", "dev", dev] if self.qdisc == "tbf" else [
                    "class", "show", "dev", dev, "classid", "1:1"]  # fmt: skip
                self._tc[ns] = TcBatch(ns, show)
        log.info("namespaces created", extra={"edge": self.edge_ns, "cloud": self.cloud_ns})
        return self

    def _one_frame_per_packet(self, ns: str, dev: str) -> None:
        """Turn off segmentation offload aggregation on a veth end (``gso_max_segs 1``).

        With it on, TCP hands the qdisc one 64 KB "packet" that stands for many frames; htb
        lets any packet through while its bucket is not in debt, so a whole request left at
        line rate (a 4 KB upload at 0.5 Mbit/s took 0.2 ms instead of ~65 ms). One frame per
        packet makes the qdisc meter what a real link would serialize. Where the kernel
        refuses, the run goes on and says so: tbf still segments large packets itself.
        """
        done = _run("ip", "-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1", check=False)
        if done.returncode != 0:
            self.segmentation_offload = True
            log.warning(
                "cannot turn off segmentation offload; htb may pass bursts at line rate",
                extra={"dev": dev, "error": done.stderr.strip()},
            )

    def set_rate(self, up_bps: float | None, down_bps: float | None) -> None:
        """Kernel rate of each direction (None: unshaped); only changed values are sent."""
        if not self._tc:
            raise ConfigError("this namespace pair has no rate qdiscs (created with shape=False)")
        for i, (ns, dev, rate) in enumerate(
            ((self.edge_ns, self.edge_if, up_bps), (self.cloud_ns, self.cloud_if, down_bps))
        ):
            if rate == self.rates[i]:
                continue
            if rate is not None and not rate > 0:
                raise ConfigError(f"kernel rate must be > 0 or None, got {rate}")
            bps = UNSHAPED_BPS if rate is None else rate
            if self.qdisc == "tbf":
                argv = ["qdisc", "change", "dev", dev, "root", *tbf_args(bps)]
            else:
                argv = ["class", "change", "dev", dev, "parent", "1:", "classid", "1:1",
                        *htb_args(bps)]  # fmt: skip
            self._tc[ns].change(argv)
            self.rates = (rate, self.rates[1]) if i == 0 else (self.rates[0], rate)

    def exec_prefix(self, side: str) -> list[str]:
        """argv prefix that runs a command in the ``edge`` or ``cloud`` namespace."""
        return ["ip", "netns", "exec", self.edge_ns if side == "edge" else self.cloud_ns]

    def remove(self) -> None:
        """Delete both namespaces (their veth ends and qdiscs go with them); idempotent."""
        for batch in self._tc.values():
            batch.close()
        self._tc.clear()
        for ns in reversed(self._created):
            done = _run("ip", "netns", "del", ns, check=False)
            if done.returncode != 0:
                log.warning("cannot delete namespace", extra={"ns": ns, "error": done.stderr})
        self._created.clear()
        _run("ip", "link", "del", self.edge_if, check=False)  # only if creation stopped midway

    def __enter__(self) -> NamespacePair:
        try:
            return self.create()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc) -> None:
        self.remove()


@contextlib.contextmanager
def enter_netns(name: str) -> Iterator[None]:
    """Move the calling thread (only it) into namespace ``name``, and back on exit.

    Sockets created meanwhile belong to ``name`` for their whole life, so a thread that runs an
    event loop can serve inside a namespace while the rest of the process stays outside.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise TandemError(f"cannot enter namespace {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            libc.setns(home.fileno(), CLONE_NEWNET)


__all__ = [
    "Capabilities",
    "NamespacePair",
    "TcBatch",
    "detect_capabilities",
    "enter_netns",
    "htb_args",
    "remove_stale",
    "tbf_args",
]
