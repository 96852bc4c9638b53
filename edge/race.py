"""The race between the cloud's token stream and local decoding for one request, never lost.

A CLOUD request streams from the decoder service; if no token has come by the hedge deadline,
local decoding starts too (with a hedge the cloud keeps going and the first complete answer
wins; without, the cloud is dropped). A call that fails or breaks mid-stream resumes locally
from the tokens already received (prefix forcing), so the app always gets the answer an
all-local greedy decode would give, as one continuous stream of ``Piece``.

The cloud's side runs in a thread and reports into one queue of typed events (``CloudTokens``,
``CloudDone``, ``CloudFailed``, ``LocalTokens``, ``LocalDone``, ``LocalFailed``); local
decoding runs in a thread of its own in a ``Race`` (``LocalRun``, started only by a hedge or a
failure) and in the request's thread in a ``HandoffRace`` (``LocalSteps``, on every request). What the
race teaches about the cloud — late, completed, failed — goes to a ``Learner`` (the agent),
which feeds its knowledge and its circuit breaker; the race itself learns nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from tandem import wire
from tandem.edge.cloud_client import CloudCall, CloudOutcome, HandoffCall, HandoffUnsupported
from tandem.edge.local_decode import (
    LocalDecode,
    LocalDone,
    LocalFailed,
    LocalRun,
    LocalSteps,
    LocalTokens,
    Piece,
)
from tandem.edge.metrics import EdgeMetrics
from tandem.errors import (
    CloudDeadline,
    CloudError,
    CloudUnavailable,
    CloudViolation,
    FingerprintMismatch,
    StreamBroken,
)
from tandem.runtime.decoding import GenerationParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudTokens:
    start: int
    ids: list[int]


@dataclass(frozen=True)
class CloudDone:
    result: CloudOutcome


@dataclass(frozen=True)
class CloudFailed:
    error: Exception


@dataclass(frozen=True)
class CloudAccepted:
    """A Handoff's upload landed at ``at_s``; the cloud continues after ``prefix``."""

    prefix: list[int]
    at_s: float


RaceEvent = (
    CloudTokens | CloudDone | CloudFailed | CloudAccepted | LocalTokens | LocalDone | LocalFailed
)


@dataclass(frozen=True)
class SentCall:
    """A cloud call on its way: what the learner needs to read its fate."""

    call: CloudCall | HandoffCall
    request_id: str
    sent_s: float
    """Monotonic time the request was sent."""

    upload_bytes: int | None = None
    """Size of the request message (the upload); None: ask the call when it is needed (a
    Handoff's message is built in its own thread, after the call starts)."""

    @property
    def nbytes(self) -> int:
        return self.upload_bytes if self.upload_bytes is not None else self.call.request_bytes


class Learner(Protocol):
    """Who hears what the race found out about a cloud call (the agent)."""

    def call_late(self, sent: SentCall, abandoned: bool) -> None:
        """No token by the hedge deadline; ``abandoned``: the call is dropped (no hedge)."""

    def call_done(self, sent: SentCall, result: CloudOutcome) -> float:
        """The call completed; returns the upload time in ms it implies (for the outcome)."""

    def call_failed(self, sent: SentCall, error: Exception) -> None:
        """The call failed (not because we cancelled it)."""

    def handoff_done(
        self, sent: SentCall, accepted_s: float | None, result: CloudOutcome | None
    ) -> float:
        """A Handoff ended well: the cloud finished (``result``), or local decoding did first
        (``result`` None; the upload landed at ``accepted_s``, or had not yet: None). Returns
        the upload time in ms it implies (0 when unknown)."""


@dataclass
class RaceResult:
    """Which side answered, and how."""

    route: str
    ids: list[int]
    finish: str
    fallbacks: list[str] = field(default_factory=list)
    first_token_ms: float = 0.0
    upload_ms: float = 0.0


def failure_reason(error: Exception) -> str:
    """The fallback reason a failed call is counted and logged under."""
    if isinstance(error, HandoffUnsupported):
        return "handoff_unsupported"
    if isinstance(error, CloudViolation):
        return "cloud_violation"
    if isinstance(error, StreamBroken):
        return "stream_broken"
    if isinstance(error, FingerprintMismatch):
        return "fingerprint_mismatch"
    if isinstance(error, CloudUnavailable):
        return "cloud_unavailable"
    return "cloud_rejected"


class _Race:
    """What both races share: the cloud's thread, local decoding, resuming and the answer."""

    def __init__(
        self,
        sent: SentCall,
        params: GenerationParams,
        learner: Learner,
        metrics: EdgeMetrics,
        decode_locally: Callable[[GenerationParams], LocalDecode],
        clock,
        route: str,
    ) -> None:
        self._sent, self._params, self._decode_locally = sent, params, decode_locally
        self._learner, self._metrics, self._clock = learner, metrics, clock
        self._events: queue.Queue[RaceEvent] = queue.Queue()
        self._local: LocalRun | LocalSteps | None = None
        self._cloud_alive = True
        self._emitted: list[int] = []
        self._result = RaceResult(route=route, ids=[], finish="length")

    def _call_cloud(self) -> CloudOutcome:
        """Run the cloud call to its end, putting its events on ``self._events``."""
        raise NotImplementedError

    def _run_cloud(self) -> None:
        events = self._events
        try:
            events.put(CloudDone(self._call_cloud()))
        except (CloudError, FingerprintMismatch) as exc:
            events.put(CloudFailed(exc))
        except Exception as exc:  # a bug in the client must not lose the request
            log.exception("cloud client failed", extra={"request_id": self._sent.request_id})
            events.put(CloudFailed(CloudUnavailable(f"cloud client error: {exc}")))

    def _stop_both(self) -> None:
        """The race is over (or abandoned): neither side keeps working for it."""
        if self._cloud_alive:
            self._sent.call.cancel()
        if self._local is not None:
            self._local.cancel()

    def _start_local(self, params: GenerationParams) -> None:
        self._local = LocalRun(self._decode_locally(params), self._events)

    def _resume_locally(self, prefix: list[int], reason: str) -> None:
        """Local decoding from ``prefix`` on (prefix forcing): no known token is lost."""
        log.info(
            "fallback",
            extra={"request_id": self._sent.request_id, "reason": reason, "tokens": len(prefix)},
        )
        self._start_local(replace(self._params, prefix=tuple(prefix)))

    def _finish(self, route: str, ids: list[int], finish: str) -> Iterator[Piece]:
        """The winner's answer: stream whatever of it the app has not seen yet."""
        self._result.route, self._result.ids, self._result.finish = route, ids, finish
        emitted = self._emitted
        if emitted != ids[: len(emitted)]:
            log.warning("routes diverged", extra={"emitted": len(emitted), "tokens": len(ids)})
        for index in range(len(emitted), len(ids)):
            emitted.append(ids[index])
            yield Piece(index, [ids[index]])


class Race(_Race):
    """One request's race; ``run()`` streams its pieces and returns its ``RaceResult``."""

    def __init__(
        self,
        sent: SentCall,
        params: GenerationParams,
        learner: Learner,
        metrics: EdgeMetrics,
        hedge_s: float,
        *,
        hedging: bool,
        decode_locally: Callable[[GenerationParams], LocalDecode],
        clock=time.monotonic,
    ) -> None:
        """``hedge_s``: seconds after sending to wait for a first token; ``hedging``: the cloud
        keeps going after that (first to finish wins) rather than being dropped;
        ``decode_locally(params)``: this request's local decoding, from ``params.prefix``."""
        super().__init__(sent, params, learner, metrics, decode_locally, clock, route="cloud")
        self._hedge_s, self._hedging = hedge_s, hedging
        self._first_token_s: float | None = None

    def run(self) -> Generator[Piece, None, RaceResult]:
        threading.Thread(target=self._run_cloud, daemon=True).start()
        try:
            while True:
                try:
                    event = self._events.get(timeout=self._wait_s())
                except queue.Empty:
                    self._give_up_waiting()
                    continue
                if (yield from self._handle(event)):
                    return self._result
        finally:
            self._stop_both()

    def _call_cloud(self) -> CloudOutcome:
        events = self._events
        return self._sent.call.run(lambda start, ids: events.put(CloudTokens(start, ids)))

    def _wait_s(self) -> float | None:
        """How long to wait for the next event: until the hedge deadline while nothing came."""
        if self._first_token_s is None and self._local is None and self._cloud_alive:
            return max(0.0, self._sent.sent_s + self._hedge_s - self._clock())
        return None

    def _give_up_waiting(self) -> None:
        """No first token in time: start local decoding now (and drop the cloud unless hedging)."""
        reason = "hedge" if self._hedging else "first_token_timeout"
        self._fallback(reason)
        self._learner.call_late(self._sent, abandoned=not self._hedging)
        if not self._hedging:
            self._sent.call.cancel()
            self._cloud_alive = False
        self._start_local(self._params)

    def _fallback(self, reason: str) -> None:
        self._result.fallbacks.append(reason)
        self._metrics.fallback(reason)

    def _handle(self, event: RaceEvent) -> Generator[Piece, None, bool]:
        """Act on one event, streaming what it adds; returns True when the race is over."""
        result = self._result
        match event:
            case CloudTokens(start, ids) | LocalTokens(start, ids):
                if self._first_token_s is None:
                    self._first_token_s = self._clock()
                    result.first_token_ms = (self._first_token_s - self._sent.sent_s) * 1000
                for offset, token in enumerate(ids):
                    if start + offset == len(self._emitted):
                        self._emitted.append(token)
                        yield Piece(start + offset, [token])
            case CloudDone(outcome):
                if self._local is not None:
                    self._local.cancel()
                result.upload_ms = self._learner.call_done(self._sent, outcome)
                final = outcome.final
                finish = wire.finish_from_proto(final.reason, "length") if final else "length"
                yield from self._finish("cloud", outcome.tokens, finish)
                return True
            case CloudFailed(error):
                return self._cloud_failed(error)
            case LocalDone(ids, finish):
                if self._cloud_alive:
                    self._sent.call.cancel_soon()  # the answer is done: cancel off its path
                yield from self._finish("local", ids, finish)
                return True
            case LocalFailed(error):
                raise error
        return False

    def _cloud_failed(self, error: Exception) -> bool:
        self._cloud_alive = False
        if self._sent.call.cancelled:
            return False  # we cancelled it (hedge lost or timeout): nothing learnt
        if self._local is not None and isinstance(error, CloudDeadline):
            # Its lateness was learnt when the hedge fired; its deadline adds nothing (a second
            # "late" here would teach the link's slowness twice, which the simulator does not).
            self._cloud_alive = False
            return False
        reason = failure_reason(error)
        log.warning("cloud failed", extra={"reason": reason, "error": str(error)})
        self._learner.call_failed(self._sent, error)
        if self._local is not None:
            return False  # the hedge is already decoding locally
        self._fallback(reason)
        prefix = list(error.tokens) if isinstance(error, StreamBroken) else []
        if len(prefix) >= self._params.max_new_tokens:
            self._result.route, self._result.ids = "cloud", prefix
            return True
        self._resume_locally(prefix, reason)
        return False


class HandoffRace(_Race):
    """One HANDOFF request: local decoding from the start, the cloud continuing from it.

    Local decoding starts at once and the hidden states go up in parallel (Decoder.Handoff).
    When the replica acknowledges them, the device's tokens at that moment are sent as the
    prefix, so the cloud never decodes them again. The app gets each position once, from
    whichever side has it first. As soon as the cloud's stream reaches past what the device
    has decoded, local decoding stops (the device's energy is saved) and the cloud's stream is
    the answer's source; if the cloud then breaks, violates the contract or stalls, local
    decoding resumes at once from every token known (prefix forcing). Before that, a cloud
    that is late (no acknowledgement by ``ack_timeout_s``) or stalls is simply dropped: local
    decoding never stopped. Either way the answer is the one an all-local decode gives.

    Stall: no cloud token ``stall_s`` after the last one; the first one may take the time the
    acknowledgement took on top (the prefix's trip plus the replica's prefill).
    """

    def __init__(
        self,
        sent: SentCall,
        params: GenerationParams,
        learner: Learner,
        metrics: EdgeMetrics,
        *,
        ack_timeout_s: float,
        stall_s: float,
        decode_locally: Callable[[GenerationParams], LocalDecode],
        clock=time.monotonic,
    ) -> None:
        super().__init__(sent, params, learner, metrics, decode_locally, clock, route="local")
        self._ack_timeout_s, self._stall_s = ack_timeout_s, stall_s
        self._accepted_s: float | None = None
        self._cloud_due_s: float | None = None
        """When the cloud's next token is due (after the acknowledgement)."""
        self._cloud_seq: list[int] = []
        """The device's prefix sent and every cloud token after it, by position."""
        self._switched = False
        """Local decoding was stopped: the cloud's stream is the source."""

    def run(self) -> Generator[Piece, None, RaceResult]:
        threading.Thread(target=self._run_cloud, daemon=True).start()
        self._start_local(self._params)
        try:
            while True:
                local = self._local
                if local is not None:  # decoding here: the cloud is heard between steps
                    event = local.step()
                    if event is None:
                        self._local = None
                    elif (yield from self._handle(event)):
                        return self._result
                    if (yield from self._drain()):
                        return self._result
                    continue
                try:
                    event = self._events.get(timeout=self._wait_s())
                except queue.Empty:
                    if (yield from self._cloud_too_slow()):
                        return self._result
                    continue
                if (yield from self._handle(event)):
                    return self._result
        finally:
            self._stop_both()

    def _start_local(self, params: GenerationParams) -> None:
        self._local = LocalSteps(self._decode_locally(params))

    def _drain(self) -> Generator[Piece, None, bool]:
        """Between two local steps: the cloud's events so far (no waiting), then its clock."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if (yield from self._handle(event)):
                return True
        if self._cloud_alive and self._wait_s() == 0.0:
            return (yield from self._cloud_too_slow())
        return False

    # -- the two sides -----------------------------------------------------------------------

    def _call_cloud(self) -> CloudOutcome:
        events = self._events
        return self._sent.call.run(
            self._progress,
            on_accepted=lambda prefix, at_s: events.put(CloudAccepted(prefix, at_s)),
            on_tokens=lambda start, ids: events.put(CloudTokens(start, ids)),
        )

    def _progress(self) -> list[int]:
        """What the device has now (the cloud thread asks on the acknowledgement)."""
        local = self._local
        return local.progress() if local is not None else list(self._emitted)

    # -- events ------------------------------------------------------------------------------

    def _wait_s(self) -> float | None:
        if not self._cloud_alive:
            return None
        if self._accepted_s is None:
            return max(0.0, self._sent.sent_s + self._ack_timeout_s - self._clock())
        return max(0.0, self._cloud_due_s - self._clock())

    def _handle(self, event: RaceEvent) -> Generator[Piece, None, bool]:
        """Act on one event, streaming what it adds; returns True when the race is over."""
        match event:
            case LocalTokens(start, ids):
                yield from self._known(start, ids)
            case CloudAccepted(prefix, at_s):
                self._accepted_s = at_s
                # The first token needs the prefix's trip and a prefill: allow the time the
                # acknowledgement took (upload + round trip, an upper bound) on top.
                self._cloud_due_s = at_s + self._stall_s + (at_s - self._sent.sent_s)
                self._cloud_seq = list(prefix)
                yield from self._known(0, prefix)
            case CloudTokens(start, ids):
                if start == len(self._cloud_seq):
                    self._cloud_seq.extend(ids)
                self._cloud_due_s = self._clock() + self._stall_s
                yield from self._known(0, self._cloud_seq[len(self._emitted) :], len(self._emitted))
                self._maybe_switch()
            case CloudDone(outcome):
                self._cloud_alive = False
                if self._local is not None:
                    self._local.cancel()
                self._result.upload_ms = self._learner.handoff_done(
                    self._sent, self._accepted_s, outcome
                )
                self._metrics.handoff("cloud")
                final = outcome.final
                finish = wire.finish_from_proto(final.reason, "length") if final else "length"
                ids = self._cloud_seq[: len(self._cloud_seq) - len(outcome.tokens)]
                yield from self._finish("cloud", ids + outcome.tokens, finish)
                return True
            case CloudFailed(error):
                return (yield from self._cloud_failed(error))
            case LocalDone(ids, finish):
                if self._cloud_alive:
                    self._sent.call.cancel_soon()  # the answer is done: cancel off its path
                    self._cloud_alive = False
                    self._result.upload_ms = self._learner.handoff_done(
                        self._sent, self._accepted_s, None
                    )
                    self._metrics.handoff("local")
                yield from self._finish("local", ids, finish)
                return True
            case LocalFailed(error):
                raise error
        return False

    def _known(self, start: int, ids: list[int], offset: int = 0) -> Iterator[Piece]:
        """Stream the positions of ``ids`` (``ids[0]`` at ``start + offset``) not yet sent."""
        emitted = self._emitted
        for i, token in enumerate(ids):
            position = start + offset + i
            if position == len(emitted):
                if self._result.first_token_ms == 0.0:
                    self._result.first_token_ms = (self._clock() - self._sent.sent_s) * 1000
                emitted.append(token)
                yield Piece(position, [token])
            elif position < len(emitted) and emitted[position] != token:
                log.warning(
                    "routes diverged",
                    extra={"request_id": self._sent.request_id, "position": position},
                )

    def _maybe_switch(self) -> None:
        """The cloud is past what the device has: stop decoding locally."""
        local = self._local
        if self._switched or local is None or len(self._cloud_seq) <= len(local.progress()):
            return
        local.cancel()
        self._local, self._switched = None, True
        self._metrics.handoff("switched")
        log.info(
            "handoff switched to the cloud",
            extra={"request_id": self._sent.request_id, "tokens": len(self._cloud_seq)},
        )

    def _cloud_too_slow(self) -> Generator[Piece, None, bool]:
        """No acknowledgement in time (late) or no token in time (stalled): drop the cloud."""
        self._sent.call.cancel()
        self._cloud_alive = False
        if self._accepted_s is None:
            reason = "handoff_late"
            self._learner.call_late(self._sent, abandoned=True)
        else:
            reason = "handoff_stalled"
            self._learner.call_failed(self._sent, CloudUnavailable("the cloud stream stalled"))
        log.warning("cloud dropped", extra={"request_id": self._sent.request_id, "reason": reason})
        return (yield from self._back_to_local(reason))

    def _cloud_failed(self, error: Exception) -> Generator[Piece, None, bool]:
        self._cloud_alive = False
        if self._sent.call.cancelled:
            return False  # we cancelled it: nothing learnt
        reason = failure_reason(error)
        log.warning("cloud failed", extra={"reason": reason, "error": str(error)})
        self._learner.call_failed(self._sent, error)
        return (yield from self._back_to_local(reason))

    def _back_to_local(self, reason: str) -> Generator[Piece, None, bool]:
        """The cloud is gone: local decoding carries on, or resumes from every known token."""
        self._result.fallbacks.append(reason)
        self._metrics.fallback(reason)
        self._metrics.handoff(reason)
        if not self._switched:
            return False  # local decoding never stopped
        self._switched = False
        prefix = list(self._emitted)
        if len(prefix) >= self._params.max_new_tokens:
            yield from self._finish("cloud", prefix, "length")
            return True
        self._resume_locally(prefix, reason)
        return False
