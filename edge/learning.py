"""What the edge agent learns: the one door every measurement takes into its knowledge.

Probes (``edge/probes.py``), the race between cloud and local decoding (``edge/race.py``,
through its ``Learner`` protocol), every cloud call's use of the radio (``CloudClient``'s
``on_radio_use``, told once when a call ends) and the finished request each report here; each event reaches
``AgentKnowledge`` at the agent's clock, under the agent's lock (request threads and the pinger
share the knowledge), and the estimates it implies are published as metrics. The same events,
by the same names, are what the simulator derives from its link model, so a simulated agent
learns what a real one would.

A mixin rather than an object of its own: the tests and the race call these methods on the
agent, and they swap ``agent.knowledge`` for a fresh one, which must be the one learnt into.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tandem.edge.breaker import CircuitBreaker
from tandem.edge.cloud_client import CloudOutcome, HandoffUnsupported, RadioUse
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.race import SentCall
from tandem.errors import CloudDeadline, CloudViolation
from tandem.policy.knowledge import AgentKnowledge, RequestSettled
from tandem.policy.observations import Decision

log = logging.getLogger("tandem.edge.agent")  # the agent's log, as before the split

__all__ = ["AgentLearning"]


class AgentLearning:
    """The agent's learning entry points; ``Agent`` sets the attributes below."""

    clock: Callable[[], float]
    _lock: threading.Lock
    knowledge: AgentKnowledge
    metrics: EdgeMetrics
    breaker: CircuitBreaker
    _handoff_supported: bool
    """False once a replica answered a Handoff with UNIMPLEMENTED."""

    def _learn(self, event, *args, **kwargs):
        """``AgentKnowledge.<event>(knowledge, now, ...)`` under the lock; publish the estimates."""
        now = self.clock()
        with self._lock:
            result = event(self.knowledge, now, *args, **kwargs)
            est = self.knowledge.estimate(now)
        self.metrics.estimates(est, self.breaker.state(now))
        return result

    def probe_sent(self) -> None:
        self._learn(AgentKnowledge.probe_sent)

    def probe_result(self, rtt_ms: float | None) -> None:
        self._learn(AgentKnowledge.probe_result, rtt_ms)

    def call_late(self, sent: SentCall, abandoned: bool) -> None:
        # Not abandoned: a hedge - local decoding started and the call goes on.
        self._learn(AgentKnowledge.call_late, sent.sent_s, sent.nbytes, hedged=not abandoned)
        if abandoned:
            self.breaker.record_failure(self.clock())

    def call_done(self, sent: SentCall, result: CloudOutcome) -> float:
        final = result.final  # the service's report: its queue wait and decoding time
        upload_ms = self._learn(
            AgentKnowledge.call_done,
            sent.nbytes,
            result.ttft_s * 1000 if result.ttft_s is not None else None,
            queue_ms=final.queue_ms if final is not None else None,
            first_step_ms=final.decode_ms / max(final.token_count, 1) if final else 0.0,
        )
        self.breaker.record_success(self.clock())
        return upload_ms

    def handoff_done(
        self, sent: SentCall, accepted_s: float | None, result: CloudOutcome | None
    ) -> float:
        """A Handoff ended well. What it teaches is a completed call's: the acknowledgement
        is the first answer (upload + RTT, no decoding step before it), the final event the
        queue report. Local decoding winning before the upload landed teaches nothing: the
        call was not late, just not needed."""
        if accepted_s is None:
            return 0.0
        final = result.final if result is not None else None
        upload_ms = self._learn(
            AgentKnowledge.call_done,
            sent.nbytes,
            (accepted_s - sent.sent_s) * 1000,
            queue_ms=final.queue_ms if final is not None else None,
        )
        self.breaker.record_success(self.clock())
        return upload_ms

    def call_failed(self, sent: SentCall, error: Exception) -> None:
        if isinstance(error, HandoffUnsupported):
            # An older replica, not a failing one: no breaker failure, no lost call.
            if self._handoff_supported:
                log.warning("the cloud has no Handoff; HANDOFF goes by Decode instead")
            self._handoff_supported = False
            return
        if isinstance(error, CloudViolation):  # the replica broke the contract: its fault
            self.metrics.violation(error.reason)
            log.warning(
                "cloud violation",
                extra={
                    "request_id": sent.request_id,
                    "replica": error.replica,
                    "violation": error.reason,
                    "tokens": len(error.tokens),
                },
            )
        if isinstance(error, CloudDeadline):
            # No token before the deadline: the same news as our own first-token timeout
            # (which fires at about the same moment when the two are equal).
            self._learn(AgentKnowledge.call_late, sent.sent_s, sent.nbytes)
        else:
            self._learn(AgentKnowledge.call_failed)
        self.breaker.record_failure(self.clock())

    def radio_used(self, use: RadioUse) -> float:
        """A cloud call (CLOUD or HANDOFF) stopped holding the radio just now: its final
        message came, it failed, or the race cancelled it (a hedge lost, a Handoff's local run
        won, its stream stalled). Its start is ``use.duration_s`` before now on the agent's
        clock; tokens count ``token_bytes`` each, as the policy prices them. Returns the
        joules it added, which the metrics count."""
        joules = self._learn(
            lambda k, now: k.radio_used(
                now - use.duration_s, now, use.up_bytes, use.tokens * k.cfg.token_bytes
            )
        )
        self.metrics.radio(joules)
        return joules

    def request_settled(self, outcome, decision: Decision, decided_s: float):
        """The request that ``decision`` routed at ``decided_s`` has its last token now: how
        long the decided route took against its prediction, a fallback's time included
        (``AgentKnowledge.request_settled``). Returns ``outcome``, for the pipeline's return."""
        self._learn(lambda k, now: k.apply(RequestSettled.of(now, decided_s, decision)))
        return outcome

    def request_done(self, target: str | None, src_len: int, ids: list[int], finish: str) -> None:
        steps = len(ids) + (finish == "eos")  # decoder steps, EOS included
        self._learn(AgentKnowledge.request_done, target or "", src_len, steps)
