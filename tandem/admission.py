"""Admission: what a gRPC call must show, and what it may hold, before it gets a handler thread.

gRPC Python gives every accepted call a slot of ``maximum_concurrent_rpcs`` and a thread of the
server's pool *before* any handler runs, and a unary-request handler's thread then waits for
the request message as long as the caller likes. About 130 calls that sent headers and never a
message held every slot of a cloud replica, without a token, until their deadlines ran out —
health checks included; 20 did the same to the edge agent's local API.

``Admission`` is a server interceptor. It runs in gRPC's accepting thread, with nothing but the
method and the metadata, before the call gets a thread:

* ``check(metadata)`` may refuse the call (``Unauthenticated``): it is answered at once on a
  small refusal pool of its own, without reading the request — so unauthenticated garbage
  bytes get UNAUTHENTICATED, not a parse error, and hold nothing;
* each *lane* (``decode``, ``health``, ...) has threads of its own and two bounds: calls still
  waiting for their request message (``max_waiting``; each at most ``first_message_s``, then
  it is cancelled) and calls running (``max_running``, counted once the message is in). A
  call over ``max_running`` is RESOURCE_EXHAUSTED at once instead of a queue; a call over
  ``max_waiting`` evicts the oldest silent one. So half-open calls cannot starve complete
  ones (whose message comes with the headers), and a lane can never take another's threads:
  Decode traffic, however hostile, leaves the health lane free. A lane with
  ``stream_first_message`` holds request-streaming calls (Decoder.Handoff) to the same rules
  until their first message.
* ``end_streams(lane)`` ends the open non-blocking streams of a lane (Health.Watch), so a drain
  does not wait for watchers that never hang up.

Handlers see the same request and context as before (the request is read here and passed on),
so servicers need no change. Statuses come from ``tandem.rpc.STATUS_CODES``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc

from tandem.errors import InputError, Overloaded, TandemError
from tandem.rpc import status_code

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Lane:
    """A class of calls with capacity of its own."""

    name: str
    max_running: int
    """Calls whose request arrived and whose handler runs; one more is RESOURCE_EXHAUSTED."""
    max_waiting: int
    """Calls accepted but still waiting for their request message; one more evicts the
    oldest of them (or is refused, if none has a thread yet)."""
    first_message_s: float
    """How long a call may take to deliver its request message; then it is cancelled."""
    authenticate: bool = True
    """Whether ``Admission.check`` must accept the call's metadata first."""
    retry_after_s: float = 0.1
    """Hint sent with RESOURCE_EXHAUSTED (trailing metadata ``retry-after-ms``)."""
    stream_first_message: bool = False
    """Request-streaming calls of this lane (Decoder.Handoff) wait for their first message
    like unary ones — counted as waiting, evictable, cancelled after ``first_message_s`` —
    and the handler gets the whole stream, that message first. Off, such calls run at once
    (reflection, whose clients speak first anyway)."""

    @property
    def threads(self) -> int:
        return self.max_running + self.max_waiting


class _Alarm:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        # Drop the callback at once: it holds the call's context, and a context kept alive
        # keeps gRPC's HTTP/2 stream open (until max_concurrent_streams refuses new ones).
        self.cancelled = True
        self.callback = None


class Watchdog:
    """One thread that runs callbacks at deadlines (a timer thread per call would cost more
    than many calls do). Cancelled alarms are dropped when their time comes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="admission-watchdog", daemon=True)
        self._thread.start()

    def after(self, delay_s: float, callback: Callable[[], None]) -> _Alarm:
        alarm = _Alarm(callback)
        entry = (self._clock() + delay_s, next(self._seq), alarm)
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                # Only a new earliest alarm changes how long the thread sleeps: with one
                # timeout for every call, that is only when the heap was empty, and a busy
                # server does not wake this thread once per call.
                self._cond.notify()
        return alarm

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > self._clock():
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    self._cond.wait(timeout)
                _, _, alarm = heapq.heappop(self._heap)
            callback = alarm.callback
            if not alarm.cancelled and callback is not None:
                try:
                    callback()
                except Exception:  # one failing callback must not stop the others
                    log.exception("watchdog callback failed")


class _LaneState:
    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.pool = futures.ThreadPoolExecutor(lane.threads, thread_name_prefix=lane.name)
        self.lock = threading.Lock()
        self.waiting = 0
        """Admitted calls without their request yet (their handler may not have started)."""
        self.running = 0
        self.waiters: dict[_Ticket, None] = {}
        """Waiting calls whose handler started, oldest first: the ones that can be evicted."""
        self.streams: set[Callable] = set()


_WAITING, _RUNNING, _DONE = "waiting", "running", "done"


class _Ticket:
    """One call's place in its lane: waiting, then running, then done (released once).
    Every change happens under the lane's lock."""

    def __init__(self, state: _LaneState, context) -> None:
        self.state = state
        self.context = context
        self.phase = _WAITING

    def run(self) -> bool:
        """Move from waiting to running; False (and done) when evicted or the lane is full."""
        state = self.state
        with state.lock:
            if self.phase is not _WAITING:
                return False
            state.waiting -= 1
            state.waiters.pop(self, None)
            if state.running >= state.lane.max_running:
                self.phase = _DONE
                return False
            state.running += 1
            self.phase = _RUNNING
            return True

    def release(self) -> None:
        state = self.state
        with state.lock:
            if self.phase is _WAITING:
                state.waiting -= 1
                state.waiters.pop(self, None)
            elif self.phase is _RUNNING:
                state.running -= 1
            self.phase = _DONE
            self.context = None


class Admission(grpc.ServerInterceptor):
    """The interceptor; see the module docstring. One per ``grpc.Server``."""

    def __init__(
        self,
        lanes: Iterable[Lane],
        lane_of: Callable[[str], str],
        check: Callable[[Metadata], None] | None = None,
        on_refused: Callable[[str, str, grpc.StatusCode], None] | None = None,
    ) -> None:
        """``lane_of(method)`` names the lane of a full method name (``/pkg.Service/Method``);
        ``check(metadata)`` raises a ``TandemError`` (``Unauthenticated``) to refuse a call;
        ``on_refused(lane, method, code)`` sees every refusal (metrics)."""
        self._lanes: Mapping[str, _LaneState] = {lane.name: _LaneState(lane) for lane in lanes}
        self._lane_of = lane_of
        self._check = check
        self._on_refused = on_refused
        self._refusals = futures.ThreadPoolExecutor(2, thread_name_prefix="refuse")
        self._watchdog = Watchdog()

    @property
    def threads(self) -> int:
        """Threads every lane together may use (size ``maximum_concurrent_rpcs`` above it)."""
        return sum(s.lane.threads for s in self._lanes.values())

    def load(self, lane: str) -> tuple[int, int]:
        """(waiting, running) calls of ``lane`` now."""
        state = self._lanes[lane]
        with state.lock:
            return state.waiting, state.running

    def end_streams(self, lane: str) -> int:
        """End every open non-blocking stream of ``lane`` with OK; returns how many."""
        state = self._lanes[lane]
        with state.lock:
            streams = list(state.streams)
            state.streams.clear()
        for send in streams:
            with contextlib.suppress(Exception):  # the call may have ended meanwhile
                send(None)
        return len(streams)

    # -- grpc.ServerInterceptor ---------------------------------------------------------------

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED, answered by gRPC without a thread
        method = handler_call_details.method
        state = self._lanes[self._lane_of(method)]
        if state.lane.authenticate and self._check is not None:
            try:
                self._check(handler_call_details.invocation_metadata or ())
            except TandemError as exc:
                return self._refusal(state.lane, method, exc)
        victim = None
        with state.lock:
            full = False
            if state.waiting < state.lane.max_waiting:
                state.waiting += 1
            elif state.waiters:
                # The oldest silent call makes room: so calls that never send their request
                # cannot starve complete ones, whose message arrives at once with the headers.
                victim = next(iter(state.waiters))
                del state.waiters[victim]
                victim.phase = _DONE  # its place (state.waiting) passes to this call
            else:
                full = True
        if victim is not None:
            self._refusals.submit(self._evict, victim, method)
        if full:
            return self._refusal(
                state.lane,
                method,
                Overloaded(
                    f"{state.lane.max_waiting} calls are already waiting for their request "
                    "message on this server; retry later",
                    retry_after_s=state.lane.retry_after_s,
                ),
            )
        return self._admitted(state, method, handler)

    # -- refusals -----------------------------------------------------------------------------

    def _refusal(self, lane: Lane, method: str, exc: TandemError):
        """A handler that answers ``exc`` at once, on the refusal pool, reading nothing."""
        code = status_code(exc)
        message = str(exc)
        trailers = ()
        if isinstance(exc, Overloaded):
            retry_ms = str(max(1, round(exc.retry_after_s * 1000)))
            trailers = (("retry-after-ms", retry_ms), ("grpc-retry-pushback-ms", retry_ms))
        if self._on_refused is not None:
            self._on_refused(lane.name, method, code)

        def refuse(requests, context):
            if trailers:
                context.set_trailing_metadata(trailers)
            context.abort(code, message)

        refuse.experimental_thread_pool = self._refusals
        return grpc.stream_stream_rpc_method_handler(refuse)

    def _abort_full(self, context, lane: Lane, method: str) -> None:
        exc = Overloaded(
            f"this server is running {lane.max_running} {lane.name} calls, its limit; retry later",
            retry_after_s=lane.retry_after_s,
        )
        if self._on_refused is not None:
            self._on_refused(lane.name, method, grpc.StatusCode.RESOURCE_EXHAUSTED)
        retry_ms = str(max(1, round(exc.retry_after_s * 1000)))
        context.set_trailing_metadata(
            (("retry-after-ms", retry_ms), ("grpc-retry-pushback-ms", retry_ms))
        )
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    # -- admitted calls -----------------------------------------------------------------------

    def _enter(self, context, state: _LaneState) -> _Ticket:
        ticket = _Ticket(state, context)
        with state.lock:
            state.waiters[ticket] = None
        if not context.add_callback(ticket.release):
            ticket.release()  # the call ended before its handler ran
        return ticket

    def _evict(self, ticket: _Ticket, method: str) -> None:
        context = ticket.context
        ticket.context = None
        if context is None:
            return
        log.debug("silent call evicted", extra={"lane": ticket.state.lane.name})
        if self._on_refused is not None:
            self._on_refused(ticket.state.lane.name, method, grpc.StatusCode.CANCELLED)
        context.cancel()

    def _first(self, requests, context, ticket: _Ticket, method: str, unary: bool = True):
        """The call's request message, or None when the call ended (or was cancelled because
        it took longer than ``first_message_s``). Aborts when the lane has no room to run.
        ``unary``: the call must then half-close (a request stream goes on instead)."""
        lane = ticket.state.lane

        def too_slow() -> None:
            context = ticket.context
            if ticket.phase is _WAITING and context is not None:
                log.debug(  # an attack would flood an info log; the metric counts it
                    "call cancelled: no request message in time",
                    extra={"method": method, "lane": lane.name, "s": lane.first_message_s},
                )
                if self._on_refused is not None:
                    self._on_refused(lane.name, method, grpc.StatusCode.CANCELLED)
                context.cancel()

        alarm = self._watchdog.after(lane.first_message_s, too_slow)
        try:
            request = next(requests, None)
            # A unary request is one message, then the client's half-close (which normally
            # comes with it): a call that sends more breaks the protocol.
            extra = next(requests, None) if request is not None and unary else None
        except grpc.RpcError:  # cancelled: by the client, or by the alarm above
            return None
        finally:
            alarm.cancel()
        if extra is not None:
            context.abort(
                status_code(InputError("")), f"{method} takes exactly one request message"
            )
        if request is None:
            if context.is_active():
                context.abort(
                    status_code(InputError("")),
                    f"{method} requires exactly one request message"
                    if unary
                    else f"{method} requires a first request message",
                )
            return None
        if not ticket.run():
            self._abort_full(context, lane, method)
        return request

    def _admitted(self, state: _LaneState, method: str, handler: grpc.RpcMethodHandler):
        serialize = handler.response_serializer
        deserialize = handler.request_deserializer
        pool = state.pool

        if handler.request_streaming:
            inner = handler.stream_stream or handler.stream_unary

            def streaming(requests, context):
                ticket = self._enter(context, state)
                if state.lane.stream_first_message:
                    first = self._first(requests, context, ticket, method, unary=False)
                    if first is None:
                        return iter(()) if handler.response_streaming else None
                    requests = itertools.chain((first,), requests)
                elif not ticket.run():  # no first message to wait for (reflection)
                    self._abort_full(context, state.lane, method)
                if handler.response_streaming:
                    return _released(inner(requests, context), ticket)
                try:
                    return inner(requests, context)
                finally:
                    ticket.release()

            streaming.experimental_thread_pool = pool
            if handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(streaming, deserialize, serialize)
            return grpc.stream_unary_rpc_method_handler(streaming, deserialize, serialize)

        if not handler.response_streaming:
            inner_unary = handler.unary_unary

            def unary(requests, context):
                ticket = self._enter(context, state)
                request = self._first(requests, context, ticket, method)
                if request is None:
                    return None
                try:
                    return inner_unary(request, context)
                finally:
                    ticket.release()  # before the answer goes out: see _released

            unary.experimental_thread_pool = pool
            return grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)

        inner_stream = handler.unary_stream
        if getattr(inner_stream, "experimental_non_blocking", False):  # Health.Watch

            def watch(requests, context, send_response_callback=None):
                ticket = self._enter(context, state)
                request = self._first(requests, context, ticket, method)
                if request is None:
                    return None
                with state.lock:
                    state.streams.add(send_response_callback)
                context.add_callback(lambda: _discard(state, send_response_callback))
                return inner_stream(request, context, send_response_callback)

            watch.experimental_non_blocking = True
            watch.experimental_thread_pool = pool
            return grpc.stream_stream_rpc_method_handler(watch, deserialize, serialize)

        def stream(requests, context):
            ticket = self._enter(context, state)
            request = self._first(requests, context, ticket, method)
            if request is None:
                return iter(())
            return _released(inner_stream(request, context), ticket)

        stream.experimental_thread_pool = pool
        return grpc.stream_stream_rpc_method_handler(stream, deserialize, serialize)


def _released(responses: Iterator, ticket: _Ticket) -> Iterator:
    """``responses``, giving the call's place back as soon as they end — before gRPC sends
    the status. Waiting for the end of the RPC instead let a client that starts its next call
    on seeing the status find its own previous call still counted (RESOURCE_EXHAUSTED). The
    RPC's end releases it too, for a stream that is never iterated (release is idempotent)."""
    try:
        yield from responses
    finally:
        ticket.release()


def _discard(state: _LaneState, send: Callable) -> None:
    with state.lock:
        state.streams.discard(send)


__all__ = ["Admission", "Lane", "Watchdog"]
