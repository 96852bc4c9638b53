"""The race between the cloud's token stream and local decoding for one request, never lost.

A CLOUD request streams from the decoder service; if no token has come by the hedge deadline,
local decoding starts too (with a hedge the cloud keeps going and the first complete answer
wins; without, the cloud is dropped). A call that fails or breaks mid-stream resumes locally
from the tokens already received (prefix forcing), so the app always gets the answer an
all-local greedy decode would give, as one continuous stream of ``Piece``.

Both sides run in threads and report into one queue of typed events (``CloudTokens``,
``CloudDone``, ``CloudFailed``, ``LocalTokens``, ``LocalDone``, ``LocalFailed``). What the
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
from tandem.edge.cloud_client import CloudCall, CloudOutcome
from tandem.edge.metrics import EdgeMetrics
from tandem.errors import (
    CloudError,
    CloudUnavailable,
    CloudViolation,
    FingerprintMismatch,
    StreamBroken,
)
from tandem.runtime.decoding import GenerationParams
from tandem.runtime.seq2seq import Seq2Seq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """New output: tokens ``ids`` starting at generated index ``start``."""

    start: int
    ids: list[int]


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
class LocalTokens:
    start: int
    ids: list[int]


@dataclass(frozen=True)
class LocalDone:
    ids: list[int]
    finish: str


@dataclass(frozen=True)
class LocalFailed:
    error: Exception


RaceEvent = CloudTokens | CloudDone | CloudFailed | LocalTokens | LocalDone | LocalFailed


@dataclass(frozen=True)
class SentCall:
    """A cloud call on its way: what the learner needs to read its fate."""

    call: CloudCall
    request_id: str
    sent_s: float
    """Monotonic time the request was sent."""
    nbytes: int
    """Size of the request message (the upload)."""


class Learner(Protocol):
    """Who hears what the race found out about a cloud call (the agent)."""

    def call_late(self, sent: SentCall, abandoned: bool) -> None:
        """No token by the hedge deadline; ``abandoned``: the call is dropped (no hedge)."""

    def call_done(self, sent: SentCall, result: CloudOutcome) -> float:
        """The call completed; returns the upload time in ms it implies (for the outcome)."""

    def call_failed(self, sent: SentCall, error: Exception) -> None:
        """The call failed (not because we cancelled it)."""


@dataclass
class RaceResult:
    """Which side answered, and how."""

    route: str
    ids: list[int]
    finish: str
    fallbacks: list[str] = field(default_factory=list)
    first_token_ms: float = 0.0
    upload_ms: float = 0.0


class LocalDecode:
    """Greedy decoding on the device as ``Piece``s; ``ids`` and ``finish`` once exhausted.

    A fresh decode first yields its forced first token; a resumed one (``params.prefix``)
    yields only what follows the prefix, which the app already has.
    """

    def __init__(
        self, model: Seq2Seq, hidden, params: GenerationParams, clock=time.monotonic
    ) -> None:
        self._model, self._hidden, self._params, self._clock = model, hidden, params, clock
        self.ids: list[int] = params.start_tokens()
        self.finish = "length"
        self.first_token_s: float | None = None
        """When the first decoded (not forced) token came."""

    def __iter__(self) -> Iterator[Piece]:
        if self.ids and not self._params.prefix:
            yield Piece(0, list(self.ids))
        for result in self._model.stream(self._hidden, self._params):  # hidden: (S, D) float32
            if result.finish == "eos":
                self.finish = "eos"
                return
            if self.first_token_s is None:
                self.first_token_s = self._clock()
            self.ids.append(result.token)
            yield Piece(result.index, [result.token])
            if result.finish is not None:
                self.finish = result.finish


class LocalRun:
    """A ``LocalDecode`` in a thread, reporting into the race's queue; cancellable."""

    def __init__(self, decode: LocalDecode, events: queue.Queue) -> None:
        self._cancel = threading.Event()
        self._decode, self._events = decode, events
        threading.Thread(target=self._run, daemon=True).start()

    def cancel(self) -> None:
        self._cancel.set()

    def _run(self) -> None:
        try:
            for piece in self._decode:
                if self._cancel.is_set():
                    return
                self._events.put(LocalTokens(piece.start, piece.ids))
            self._events.put(LocalDone(self._decode.ids, self._decode.finish))
        except Exception as exc:  # surfaced to the request; local failure is a real error
            self._events.put(LocalFailed(exc))


def failure_reason(error: Exception) -> str:
    """The fallback reason a failed call is counted and logged under."""
    if isinstance(error, CloudViolation):
        return "cloud_violation"
    if isinstance(error, StreamBroken):
        return "stream_broken"
    if isinstance(error, FingerprintMismatch):
        return "fingerprint_mismatch"
    if isinstance(error, CloudUnavailable):
        return "cloud_unavailable"
    return "cloud_rejected"


class Race:
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
        self._sent, self._params, self._decode_locally = sent, params, decode_locally
        self._learner, self._metrics, self._clock = learner, metrics, clock
        self._hedge_s, self._hedging = hedge_s, hedging
        self._events: queue.Queue[RaceEvent] = queue.Queue()
        self._local: LocalRun | None = None
        self._cloud_alive = True
        self._first_token_s: float | None = None
        self._emitted: list[int] = []
        self._result = RaceResult(route="cloud", ids=[], finish="length")

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
            if self._cloud_alive:
                self._sent.call.cancel()
            if self._local is not None:
                self._local.cancel()

    def _run_cloud(self) -> None:
        events = self._events
        try:
            result = self._sent.call.run(lambda start, ids: events.put(CloudTokens(start, ids)))
            events.put(CloudDone(result))
        except (CloudError, FingerprintMismatch) as exc:
            events.put(CloudFailed(exc))
        except Exception as exc:  # a bug in the client must not lose the request
            log.exception("cloud client failed", extra={"request_id": self._sent.request_id})
            events.put(CloudFailed(CloudUnavailable(f"cloud client error: {exc}")))

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

    def _start_local(self, params: GenerationParams) -> None:
        self._local = LocalRun(self._decode_locally(params), self._events)

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
                    self._sent.call.cancel()
                yield from self._finish("local", ids, finish)
                return True
            case LocalFailed(error):
                raise error
        return False

    def _cloud_failed(self, error: Exception) -> bool:
        self._cloud_alive = False
        if self._sent.call.cancelled:
            return False  # we cancelled it (hedge lost or timeout): nothing learnt
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
        log.info(
            "fallback",
            extra={"request_id": self._sent.request_id, "reason": reason, "tokens": len(prefix)},
        )
        self._start_local(replace(self._params, prefix=tuple(prefix)))
        return False

    def _finish(self, route: str, ids: list[int], finish: str) -> Iterator[Piece]:
        """The winner's answer: stream whatever of it the app has not seen yet."""
        self._result.route, self._result.ids, self._result.finish = route, ids, finish
        emitted = self._emitted
        if emitted != ids[: len(emitted)]:
            log.warning("routes diverged", extra={"emitted": len(emitted), "tokens": len(ids)})
        for index in range(len(emitted), len(ids)):
            emitted.append(ids[index])
            yield Piece(index, [ids[index]])
