"""The device's side of a request: greedy decoding as a stream of ``Piece``, run inline or in
a thread, and the events it reports to a race (``tandem.edge.race``).

Kept apart from the race because the plain LOCAL route uses it alone (``LocalDecode``), and a
race only needs its events and its two runners: ``LocalRun`` (a thread of its own, for a
hedge or a failover started while the request's thread waits on the cloud) and ``LocalSteps``
(one step at a time in the request's thread, for a handoff).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tandem.runtime.decoding import GenerationParams
from tandem.runtime.seq2seq import Seq2Seq


@dataclass(frozen=True)
class Piece:
    """New output: tokens ``ids`` starting at generated index ``start``."""

    start: int
    ids: list[int]


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

    def progress(self) -> list[int]:
        """Every token generated so far (prefix included), from any thread: a snapshot."""
        return list(self._decode.ids)

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


class LocalSteps:
    """A ``LocalDecode`` run one step at a time in the caller's thread; cancellable.

    Why not a thread, as in ``LocalRun``: in a handoff the device decodes on every request, so
    the hand-off of each token from a decoding thread to the request's thread is paid on every
    request (about 1 ms for a 20-token answer on a small CPU). Stepping it inline, the race
    reads the cloud's events between two steps instead (a step is about a millisecond).
    """

    def __init__(self, decode: LocalDecode) -> None:
        self._decode = decode
        self._pieces = iter(decode)
        self._stopped = False

    def progress(self) -> list[int]:
        """Every token generated so far (prefix included), from any thread: a snapshot."""
        return list(self._decode.ids)

    def cancel(self) -> None:
        self._stopped = True

    def step(self) -> LocalTokens | LocalDone | None:
        """Decode the next token (a failure raises); None once cancelled or done."""
        if self._stopped:
            return None
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._stopped = True
            return LocalDone(self._decode.ids, self._decode.finish)
        return LocalTokens(piece.start, piece.ids)
