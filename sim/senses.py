"""Senses: what the simulated agent learns, and the instant it learns it.

Kept apart from the runner so the rule "the agent is fed only what it would have measured by
then, never the trace" lives in one place: the runner plays requests out and hands every event
here, and ``Senses`` holds each back until the agent's clock reaches it.
"""

from __future__ import annotations

import heapq
import math

from tandem.policy.knowledge import (
    AgentKnowledge,
    CallDone,
    CallFailed,
    CallLate,
    Event,
    ProbeResult,
    ProbeSent,
)


class Senses:
    """The simulated agent's senses: each event reaches its ``AgentKnowledge`` at the instant
    the agent would learn it, never earlier.

    Probes come from a list in time order; everything else (a call turning late, a call's
    end, a finished request) is known when the request is played out but happens later, so
    it waits in a queue until the next decision's time passes it. On a tie a probe goes
    first, then events in the order they were queued.
    """

    def __init__(self, knowledge: AgentKnowledge, probes: list[ProbeSent | ProbeResult]) -> None:
        self.knowledge = knowledge
        self._probes = probes
        self._next_probe = 0
        self._pending: list[tuple[float, int, Event]] = []  # heap of (time, seq, event)
        self._seq = 0

    def later(self, event: Event) -> None:
        heapq.heappush(self._pending, (event.t_s, self._seq, event))
        self._seq += 1

    def catch_up(self, t_s: float) -> None:
        """Deliver every event at or before ``t_s``, in time order."""
        probes, pending = self._probes, self._pending
        while True:
            t_probe = probes[self._next_probe].t_s if self._next_probe < len(probes) else math.inf
            t_heap = pending[0][0] if pending else math.inf
            if min(t_probe, t_heap) > t_s:
                return
            if t_probe <= t_heap:
                self.knowledge.apply(probes[self._next_probe])
                self._next_probe += 1
            else:
                self.knowledge.apply(heapq.heappop(pending)[2])


def learn_call(
    learn,
    tl,
    t_e: float,
    nbytes: int,
    late,
    abandon: float,
    done: float,
    queue_ms: float,
    hedged: bool = False,
) -> None:
    """Queue the events of one cloud call the real agent (``tandem.edge.agent``) would see, each
    at the instant it sees it, and no more:

    - the call turning late (hedge deadline or call deadline passed without what it waited
      for): ``CallLate`` if no token has come yet (see ``AgentKnowledge.call_late``), else
      ``CallFailed`` — after a first token the upload is known to be done, so a stream that
      only ran out of time says nothing about it;
    - a completed call, from its final message: ``CallDone`` with the time to first token and
      the upload's duration (the agent infers it from that time minus the RTT and the server's
      own times; the simulator knows it exactly) and the cloud's queue report (the simulated
      service reports its mean wait). A call dropped before its end (the hedge's local run
      won, or it broke at the deadline) teaches nothing more.
    """
    if late is not None:
        late_event = CallLate(late, t_e, nbytes, hedged)  # hedged: the hedge deadline fired
        learn(late_event if tl.first_token_s > late else CallFailed(late))
    if done <= abandon:
        ttft_ms = (tl.first_token_s - t_e) * 1000.0
        learn(CallDone(done, nbytes, ttft_ms, tl.upload_end_s - t_e, queue_ms))
