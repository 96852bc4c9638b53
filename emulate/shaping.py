"""Shaping: what a link does to a byte stream — rate, delay, loss, partitions — with no I/O.

``LinkState`` is the link at one instant; ``Pipe`` is one direction of one connection as a
pure state machine: bytes go in (``push``), leave the serializer at the link's rate
(``advance``), travel for the one-way delay (plus a retransmission timeout when a segment is
"lost") and come out in order (``pop_due``). Callers pass the time and a
``numpy.random.Generator``; the socket shell in ``tandem.emulate.relay`` only moves bytes
when the pipe says so. Keeping the model here makes it testable to the microsecond without
sockets or sleeps.

Models, and why:

- **Rate**: a fluid serializer, MSS-sized segments leaving back to back at the current rate.
  The rate may change at any instant (``advance`` is called with the old state up to the change),
  so a transfer that spans several trace samples pays each sample's rate for the bytes it moves
  in it — the same integral the simulator's ``Trace.transfer_end`` computes. An idle pipe
  banks no credit: a link cannot send faster later for having been idle.
- **Delay**: each segment arrives ``delay_ms`` after it left the serializer.
- **Loss** (the kernel here has no netem, and the relay terminates TCP on both sides, so bytes
  are never really dropped): the simulator's model (``tandem.sim.link``), so that the two
  price a loss alike and the fidelity bench compares the rest. Each uplink segment is lost
  with probability ``loss``; a lost segment arrives one RTT late (fast retransmit), and
  delivery stays in order, so later segments wait behind it (head-of-line blocking, as in
  TCP) and several losses of one transfer cost about one RTT, as in the simulator's one draw
  per transfer. The downlink (the small token messages) loses nothing, as in the simulator.
  Real TCP can do worse (a lost last segment waits for a timeout of 200 ms or more); that is
  a limit of both models, not a difference between them.
- **Partition** (100 % loss): nothing leaves the serializer and nothing in flight arrives; the
  bytes are held, not dropped, and flow again when the partition ends — what TCP does once a
  blackholed path comes back (the in-flight bytes are resent and arrive one delay after the
  heal; RTO back-off beyond that is not modelled).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from tandem.errors import ConfigError

log = logging.getLogger(__name__)

MSS_BYTES = 1400
"""Segment size: the unit of serialization and of loss draws (a typical TCP MSS)."""


@dataclass(frozen=True)
class LinkState:
    """The link at one instant, in both directions."""

    delay_ms: float = 0.0
    """One-way delay added to every segment, each direction (RTT = 2 x delay_ms)."""
    up_bps: float | None = None
    """Rate client -> upstream in bit/s; None: unshaped, 0: stalled (an outage)."""
    down_bps: float | None = None
    """Rate upstream -> client in bit/s; None: unshaped, 0: stalled."""
    loss: float = 0.0
    """Probability that an uplink segment is lost (and arrives one RTT late)."""
    partitioned: bool = False
    """100 % loss: bytes are held (not delivered, not dropped) until it ends."""

    def __post_init__(self) -> None:
        if not (isinstance(self.delay_ms, int | float) and math.isfinite(self.delay_ms)) or (
            self.delay_ms < 0
        ):
            raise ConfigError(f"link delay_ms must be a finite number >= 0, got {self.delay_ms!r}")
        for name in ("up_bps", "down_bps"):
            value = getattr(self, name)
            if value is None:
                continue
            if not (isinstance(value, int | float) and math.isfinite(value)) or value < 0:
                raise ConfigError(
                    f"link {name} must be None (unshaped) or a finite number >= 0, got {value!r}"
                )
        if not (isinstance(self.loss, int | float) and 0 <= self.loss < 1):
            raise ConfigError(
                f"link loss must be in [0, 1) (use partitioned for 100%), got {self.loss!r}"
            )
        if not isinstance(self.partitioned, bool):
            raise ConfigError(f"link partitioned must be a bool, got {self.partitioned!r}")

    @property
    def rtt_ms(self) -> float:
        return 2.0 * self.delay_ms

    @property
    def loss_penalty_ms(self) -> float:
        """What a lost segment costs: one RTT (fast retransmit), as the simulator prices it."""
        return self.rtt_ms

    def rate_bps(self, direction: str) -> float | None:
        """``up_bps`` or ``down_bps`` by direction name (``up``/``down``)."""
        return self.up_bps if direction == "up" else self.down_bps


def segment_delivery_s(
    depart_s: float,
    nbytes: int,
    state: LinkState,
    rng: np.random.Generator,
    direction: str = "up",
) -> float:
    """When a chunk of ``nbytes`` that left the serializer at ``depart_s`` arrives.

    Uplink only: one loss draw per MSS segment of the chunk; any loss costs one RTT
    (``LinkState.loss_penalty_ms``). The downlink loses nothing (see the module docstring).
    """
    arrive = depart_s + state.delay_ms / 1000.0
    if direction == "up" and state.loss > 0 and nbytes > 0:
        segments = max(1, math.ceil(nbytes / MSS_BYTES))
        if bool((rng.random(segments) < state.loss).any()):
            arrive += state.loss_penalty_ms / 1000.0
    return arrive


class Pipe:
    """One direction of one connection: serializer, then a delay line, delivered in order.

    Not thread-safe and clock-free: every method takes ``now_s``. The caller must call
    ``advance(now, old_state)`` before it switches to a new state, so the bytes moved before
    the switch are priced at the old rate.
    """

    def __init__(self, direction: str, rng: np.random.Generator) -> None:
        if direction not in ("up", "down"):
            raise ConfigError(f"pipe direction must be 'up' or 'down', got {direction!r}")
        self.direction = direction
        self._rng = rng
        self._queue: deque[bytes] = deque()  # not yet serialized
        self._queued = 0
        self._head_sent = 0  # bytes of _queue[0] already serialized
        self._clock: float | None = None  # serializer's time of last advance
        self._credit = 0.0  # bytes of the next segment already serialized (fluid)
        self._flight: deque[tuple[float, bytes]] = deque()  # (arrival time, bytes), in order
        self._last_arrival = -math.inf

    # -- input ---------------------------------------------------------------------------

    def push(self, now_s: float, data: bytes) -> None:
        """Bytes handed to the link at ``now_s`` (they queue behind earlier ones)."""
        if not data:
            return
        if self._queued == 0:
            self._clock = now_s  # an idle link banks no credit
            self._credit = 0.0
        self._queue.append(bytes(data))
        self._queued += len(data)

    @property
    def queued_bytes(self) -> int:
        """Bytes not yet through the serializer."""
        return self._queued

    @property
    def in_flight_bytes(self) -> int:
        return sum(len(b) for _, b in self._flight)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return self.queued_bytes == 0 and not self._flight

    # -- serializer ----------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        out = bytearray()
        while n > 0 and self._queue:
            head = self._queue[0]
            rest = len(head) - self._head_sent
            k = min(n, rest)
            out += head[self._head_sent : self._head_sent + k]
            self._head_sent += k
            n -= k
            if self._head_sent == len(head):
                self._queue.popleft()
                self._head_sent = 0
        self._queued -= len(out)
        return bytes(out)

    def advance(self, now_s: float, state: LinkState) -> None:
        """Serialize what the link carried between the last call and ``now_s`` at ``state``."""
        last = self._clock if self._clock is not None else now_s
        self._clock = max(now_s, last)
        if self.queued_bytes == 0:
            self._credit = 0.0
            return
        if state.partitioned:
            return  # a blackholed link moves nothing; what waits keeps waiting
        rate = state.rate_bps(self.direction)
        if rate is None:  # unshaped: everything leaves now
            self._depart(now_s, self._take(self._queued), state)
            self._credit = 0.0
            return
        bytes_per_s = rate / 8.0
        if bytes_per_s <= 0:
            return
        budget = self._credit + bytes_per_s * (self._clock - last)
        # Whole segments leave at the instant their last byte is serialized.
        while self.queued_bytes > 0:
            need = min(MSS_BYTES, self.queued_bytes)
            if budget + 1e-9 < need:
                break
            budget -= need
            self._depart(self._clock - budget / bytes_per_s, self._take(need), state)
        if self.queued_bytes == 0:
            budget = 0.0
        self._credit = max(0.0, budget)

    def _depart(self, depart_s: float, data: bytes, state: LinkState) -> None:
        if not data:
            return
        arrive = segment_delivery_s(depart_s, len(data), state, self._rng, self.direction)
        arrive = max(arrive, self._last_arrival)  # TCP delivers in order
        self._last_arrival = arrive
        self._flight.append((arrive, data))

    # -- output --------------------------------------------------------------------------

    def pop_due(self, now_s: float, state: LinkState) -> bytes:
        """Bytes that have arrived by ``now_s`` (none while partitioned)."""
        if state.partitioned:
            return b""
        out = bytearray()
        while self._flight and self._flight[0][0] <= now_s:
            out += self._flight.popleft()[1]
        return bytes(out)

    def heal(self, now_s: float, state: LinkState) -> None:
        """A partition ended at ``now_s``: what was in flight arrives one delay from now."""
        floor = now_s + state.delay_ms / 1000.0
        self._flight = deque((max(t, floor), b) for t, b in self._flight)
        if self._flight:
            self._last_arrival = max(self._last_arrival, self._flight[-1][0])

    def next_event_s(self, state: LinkState) -> float | None:
        """The next instant something changes under ``state`` (None: nothing will by itself)."""
        if state.partitioned:
            return None
        times = []
        if self._flight:
            times.append(self._flight[0][0])
        if self.queued_bytes > 0 and self._clock is not None:
            rate = state.rate_bps(self.direction)
            if rate is None:
                times.append(self._clock)
            elif rate > 0:
                need = min(MSS_BYTES, self.queued_bytes) - self._credit
                times.append(self._clock + max(0.0, need) / (rate / 8.0))
        return min(times) if times else None


__all__ = ["MSS_BYTES", "LinkState", "Pipe", "segment_delivery_s"]
