"""ShapingRelay: a TCP relay that makes a loopback connection behave like a shaped link.

The kernels we run on have no ``netem``, so delay, loss and partitions cannot be set on an
interface; a relay on the path does them in userspace (and rate too, where no qdisc is
available). Every connection accepted on ``listen`` is joined to ``upstream``; the bytes of
each direction pass through a ``tandem.emulate.shaping.Pipe`` that decides when they may
leave. ``set_state`` changes the link for every connection at once, mid-transfer included.

The relay runs its own asyncio loop in a background thread, so synchronous code — tests, the
emulator's runner, the chaos scenario — starts it, changes its state and stops it with plain
calls::

    with ShapingRelay(("127.0.0.1", cloud_port)) as relay:
        port = relay.port
        relay.set_state(LinkState(delay_ms=30, up_bps=2e6, down_bps=8e6))
        ...
        relay.set_state(LinkState(partitioned=True))  # bytes stop, connections stay up

What it is not: the relay terminates TCP on both sides, so each side's kernel sees an instant
loopback peer (its own RTT estimate stays tiny; the connection handshake is not delayed) and
a "lost" segment is a late segment, never a gap. The model is in ``shaping.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from dataclasses import dataclass

import numpy as np

from tandem.emulate.shaping import LinkState, Pipe
from tandem.errors import ConfigError

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024
MAX_QUEUED_BYTES = 4 * 1024 * 1024
"""Bytes a direction may hold before the relay stops reading its sender (the sender's socket
buffer then fills and its writes block, as they would behind a slow link)."""


@dataclass(frozen=True)
class RelayCounters:
    """What crossed the relay since it started."""

    bytes_up: int
    """Bytes delivered client -> upstream."""
    bytes_down: int
    """Bytes delivered upstream -> client."""
    connections: int
    """Connections accepted."""
    open_connections: int


class _Conn:
    """One relayed connection: two pipes and the tasks that move their bytes."""

    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.pipes = {
            "up": Pipe("up", np.random.default_rng([seed, index, 0])),
            "down": Pipe("down", np.random.default_rng([seed, index, 1])),
        }
        self.wake = {"up": asyncio.Event(), "down": asyncio.Event()}
        self.room = {"up": asyncio.Event(), "down": asyncio.Event()}
        self.eof = {"up": False, "down": False}
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []

    def abort(self) -> None:
        for writer in self.writers:
            transport = writer.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class ShapingRelay:
    """Relay TCP from ``listen`` to ``upstream`` through a shaped link (see the module doc)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        state: LinkState | None = None,
        seed: int = 0,
        netns: str | None = None,
    ) -> None:
        """``netns``: serve inside this network namespace (only the relay's thread enters it)."""
        if not isinstance(state, LinkState | None):
            raise ConfigError(f"relay state must be a LinkState, got {type(state).__name__}")
        self.upstream = upstream
        self.listen = listen
        self.seed = seed
        self.netns = netns
        self._state = state or LinkState()  # what the loop applies
        self._requested = self._state  # what callers last set
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._accepted = 0
        self._bytes = {"up": 0, "down": 0}
        self.port: int | None = None

    # -- lifecycle (any thread) -----------------------------------------------------------

    def start(self) -> int:
        """Listen and relay in a background thread; returns the bound port."""
        if self._thread is not None:
            raise ConfigError("relay already started")
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="shaping-relay", daemon=True
        )
        self._thread.start()
        self.port = ready.result(timeout=10.0)
        log.info(
            "relay started",
            extra={"listen": f"{self.listen[0]}:{self.port}", "upstream": self.upstream},
        )
        return self.port

    def stop(self) -> None:
        """Close the listener and every connection; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                fut.result(timeout=5.0)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        self._thread = None
        self._loop = None

    def __enter__(self) -> ShapingRelay:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the link --------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        """The link as last set (applied to every connection at once)."""
        return self._requested

    def set_state(self, state: LinkState) -> None:
        """Change the link now, for every connection, bytes in flight included."""
        if not isinstance(state, LinkState):
            raise ConfigError(f"relay state must be a LinkState, got {type(state).__name__}")
        with self._lock:
            self._requested = state
            loop = self._loop
        if loop is None or not loop.is_running():
            self._state = state
            return
        with contextlib.suppress(RuntimeError):  # loop closing: the state no longer matters
            loop.call_soon_threadsafe(self._apply, state)

    def counters(self) -> RelayCounters:
        return RelayCounters(
            bytes_up=self._bytes["up"],
            bytes_down=self._bytes["down"],
            connections=self._accepted,
            open_connections=len(self._conns),
        )

    def drop_connections(self) -> int:
        """Reset every open connection (both sides see a connection reset); returns how many."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return 0
        fut = asyncio.run_coroutine_threadsafe(self._drop_all(), loop)
        return fut.result(timeout=5.0)

    # -- inside the loop -------------------------------------------------------------------

    def _run(self, ready: concurrent.futures.Future) -> None:
        if self.netns is None:
            self._serve(ready)
            return
        from tandem.emulate.netns import enter_netns

        try:
            with enter_netns(self.netns):
                self._serve(ready)
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)

    def _serve(self, ready: concurrent.futures.Future) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.listen[0], self.listen[1])
            )
        except OSError as exc:
            ready.set_exception(
                ConfigError(f"relay cannot listen on {self.listen[0]}:{self.listen[1]}: {exc}")
            )
            loop.close()
            return
        self._loop = loop
        ready.set_result(self._server.sockets[0].getsockname()[1])
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()

    async def _drop_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        self._conns.clear()
        return len(conns)

    def _apply(self, state: LinkState) -> None:
        now = asyncio.get_running_loop().time()
        old = self._state
        for conn in self._conns:
            for pipe in conn.pipes.values():
                pipe.advance(now, old)  # bytes moved so far pay the old rate
                if old.partitioned and not state.partitioned:
                    pipe.heal(now, state)
            for event in conn.wake.values():
                event.set()
        self._state = state

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        conn = _Conn(self._accepted, self.seed)
        conn.writers.append(writer)
        self._conns.add(conn)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                # A refused connection is news that crosses the link too: not during a
                # partition, and one round trip late.
                while self._state.partitioned:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(self._state.rtt_ms / 1000.0)
                conn.abort()
                return
            conn.writers.append(up_writer)
            conn.tasks = [
                asyncio.create_task(self._read(conn, "up", reader)),
                asyncio.create_task(self._read(conn, "down", up_reader)),
                asyncio.create_task(self._pump(conn, "up", up_writer)),
                asyncio.create_task(self._pump(conn, "down", writer)),
            ]
            pumps = conn.tasks[2:]
            await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            # The relay is stopping. Ending normally (both sides are closed below) keeps
            # asyncio's stream callback from logging the cancellation as an error.
            pass
        finally:
            conn.abort()
            self._conns.discard(conn)

    async def _read(self, conn: _Conn, direction: str, reader: asyncio.StreamReader) -> None:
        pipe = conn.pipes[direction]
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(READ_BYTES)
                if not data:
                    break
                now = loop.time()
                pipe.advance(now, self._state)
                pipe.push(now, data)
                conn.wake[direction].set()
                while pipe.queued_bytes > MAX_QUEUED_BYTES:
                    conn.room[direction].clear()
                    await conn.room[direction].wait()
        except (ConnectionError, OSError):
            pass  # a reset sender: deliver what it sent, then close (like a FIN)
        conn.eof[direction] = True
        conn.wake[direction].set()

    async def _pump(self, conn: _Conn, direction: str, writer: asyncio.StreamWriter) -> None:
        pipe = conn.pipes[direction]
        wake = conn.wake[direction]
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time()
                state = self._state
                pipe.advance(now, state)
                data = pipe.pop_due(now, state)
                if pipe.queued_bytes <= MAX_QUEUED_BYTES:
                    conn.room[direction].set()
                if data:
                    self._bytes[direction] += len(data)  # counted before anyone can see it
                    writer.write(data)
                    await writer.drain()
                    continue  # time passed while draining: look again before sleeping
                if conn.eof[direction] and pipe.idle:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                wake.clear()
                nxt = pipe.next_event_s(state)
                timeout = None if nxt is None else max(0.0, nxt - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
        except (ConnectionError, OSError):
            conn.abort()  # the receiver is gone: so is the connection


__all__ = ["LinkState", "RelayCounters", "ShapingRelay"]
