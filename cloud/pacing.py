"""Pacing of token messages: how long a stream's tokens wait between two messages.

A token message costs the replica a fixed amount of CPU whatever it holds: serializing it,
gRPC's write and its completion, the handler thread's wake-ups — about 130 us on a core that
also runs the batched steps, against 40 us hot. With a full batch, one message per stream
every 20 ms cost more than a tenth of the core; those are steps not taken. So the hold grows
with the number of streams: every stream of a model together may spend at most
``cpu_share`` of one core on token messages between their first and their last, and no
stream waits more than ``max_s`` between two (the app behind the edge agent sees progress at
least that often). Alone on a replica a stream is held ``min_s``
(``scheduler.stream_interval_ms``), as before. The first tokens and the end of a stream are
never held: time to first token and total latency do not depend on the pacing. Handoff
streams are not paced: the device stops its own decoding once the cloud's stream passes it,
so their tokens wait ``min_s`` at most.

Pure arithmetic and one running average; the servicer measures each message's CPU with
``time.thread_time`` and asks for the next hold.
"""

from __future__ import annotations

from dataclasses import dataclass

_COST_WEIGHT = 0.05
"""Weight of the newest message in the running average of a message's CPU cost."""


@dataclass
class Pacing:
    """The hold between two token messages of one model's streams."""

    min_s: float
    """Least hold (``scheduler.stream_interval_ms``); 0 sends what each step made, however
    busy the replica is (no pacing)."""
    max_s: float
    """Longest hold, however busy (``scheduler.stream_interval_max_ms``)."""
    cpu_share: float
    """Share of one core every stream together may spend on token messages in between
    (``scheduler.stream_cpu_share``); 0 holds ``min_s`` always."""
    message_cpu_s: float = 0.0
    """Running average of one token message's CPU in its handler thread."""

    def observe(self, cpu_s: float) -> None:
        """One message was sent and cost ``cpu_s`` of its handler thread's CPU.

        Handler threads call this without a lock: a lost update of a running average
        changes nothing that matters."""
        if self.message_cpu_s == 0.0:
            self.message_cpu_s = cpu_s
        else:
            self.message_cpu_s += _COST_WEIGHT * (cpu_s - self.message_cpu_s)

    def hold_s(self, streams: int) -> float:
        """The hold before a stream's next message while ``streams`` streams decode."""
        if self.cpu_share <= 0.0 or self.min_s <= 0.0:
            return self.min_s
        wanted = streams * self.message_cpu_s / self.cpu_share
        return min(max(self.min_s, wanted), max(self.min_s, self.max_s))
