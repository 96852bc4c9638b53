"""The gRPC shell of the decoder: tandem.v1.Decoder handlers, and the one error -> status table.

A handler authenticates the caller, validates the request (``tandem.cloud.validation``),
takes a per-client slot, submits the job to its model's engine and relays the engine's updates
as ``DecodeEvent``s — ``TokenChunk``s (the first at once, then at most one per
``scheduler.stream_interval_ms``, each holding the tokens decoded since), then one
``DecodeFinal``, sent as soon as the sequence ends. Handoff is the same after two steps of
its own: ``HandoffAccepted`` once the hidden states are checked, then a bounded wait for the
device's prefix, which the job continues from. It never runs the model itself. Errors become
statuses through ``tandem.rpc.STATUS_CODES``, the one table of both services, documented for
clients in ``docs/cloud-contract.md`` ("Status codes").
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import grpc

from tandem.admission import Watchdog
from tandem.cloud.auth import Authenticator, Principal, tls_identity
from tandem.cloud.engine import Engine, ModelFailure, Stream
from tandem.cloud.limits import ClientLimiter
from tandem.cloud.metrics import Metrics
from tandem.cloud.pacing import Pacing
from tandem.cloud.scheduler import Update
from tandem.cloud.validation import (
    ACCEPTED_CODECS,
    ACCEPTED_COMPRESSIONS,
    ServedModel,
    find_model,
    validate_handoff_start,
    validate_request,
    with_prefix,
)
from tandem.errors import InputError, Overloaded
from tandem.rpc import STATUS_CODES, Undecodable, status_code
from tandem.v1 import decoder_pb2, decoder_pb2_grpc
from tandem.wire import codec_to_proto, compression_to_proto, finish_to_proto

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after-ms"
"""Trailing metadata on RESOURCE_EXHAUSTED from a full queue or client limit: wait this many
milliseconds before retrying (here or elsewhere)."""
PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""The same hint under the name gRPC's built-in retry policy obeys."""
REPLICA_KEY = "tandem-replica-id"
"""Trailing metadata on every Decode error: which replica answered."""

_NO_DEADLINE_S = 1e6
"""gRPC reports a huge time_remaining when the caller set no deadline."""
_POLL_S = 1.0
"""How often a waiting handler checks that its client is still there (cancellation normally
wakes it at once through the RPC's termination callback)."""

_Event = Update | ModelFailure | None
"""What a ``Stream`` carries (see ``Stream``)."""

_HALF_CLOSED = object()
"""A Handoff's request stream ended where a message was due."""


def _outcome(request_id: str) -> dict:
    """What a call's log line and metrics say about it, filled in as the call goes."""
    return {"request_id": request_id, "model": None, "client": None, "reason": None, "tokens": 0}


class DecoderServicer(decoder_pb2_grpc.DecoderServicer):
    """tandem.v1.Decoder over the engines of the served model bundles (keyed by fingerprint)."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        served: Mapping[str, ServedModel],
        authenticator: Authenticator,
        limiter: ClientLimiter,
        metrics: Metrics,
        replica_id: str,
        default_deadline_s: float,
        pacing: Mapping[str, Pacing],
        clock: Callable[[], float] = time.monotonic,
        handoff_prefix_timeout_s: float = 2.0,
    ) -> None:
        self._engines = dict(engines)
        self._served = dict(served)
        self._auth = authenticator
        self._limiter = limiter
        self._metrics = metrics
        self._replica_id = replica_id
        self._default_deadline_s = default_deadline_s
        self._clock = clock
        self._pacing = {fp: pacing[fp] for fp in self._engines}
        """Per model fingerprint."""
        self._stage_timers: dict[str, dict] = {}
        self._handoff_prefix_timeout_s = handoff_prefix_timeout_s
        self._watchdog: Watchdog | None = None  # started by the first Handoff
        self._watchdog_lock = threading.Lock()

    # -- Decode ------------------------------------------------------------------------------

    def Decode(
        self, request: decoder_pb2.DecodeRequest, context: grpc.ServicerContext
    ) -> Iterator[decoder_pb2.DecodeEvent]:
        arrived = self._clock()
        deadline = arrived + self._remaining_s(context)
        request_id = "" if isinstance(request, Undecodable) else request.request_id[:128]
        outcome = _outcome(request_id)
        body = self._decode(request, context, deadline, arrived, outcome)
        yield from self._serve("Decode", body, context, arrived, deadline, outcome)

    def _remaining_s(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None or remaining > _NO_DEADLINE_S:
            remaining = self._default_deadline_s
        return remaining

    def _serve(
        self,
        method: str,
        body: Iterator,
        context: grpc.ServicerContext,
        arrived: float,
        deadline: float,
        outcome: dict,
    ) -> Iterator:
        """``body``'s events, then the call's one log line, its metrics and its status."""
        what_ = method.lower()
        error: BaseException | None = None
        try:
            yield from body
        except GeneratorExit:  # gRPC closed the stream under us: the client went away
            self._count(method, grpc.StatusCode.CANCELLED)
            log.info("%s cancelled by client", what_, extra=outcome)
            raise
        except Exception as exc:  # mapped below; the abort must happen outside this block
            error = exc
        model = outcome["model"] or "-"
        if method == "Decode":
            self._metrics.request_seconds.labels(model).observe(self._clock() - arrived)
        fields = {
            "request_id": outcome["request_id"],
            "client": outcome["client"],
            "model": model,
            "tokens": outcome["tokens"],
            "ms": round((self._clock() - arrived) * 1000.0, 1),
        }
        if error is None:
            if outcome["reason"]:
                code, what = grpc.StatusCode.OK, outcome["reason"]
            elif self._clock() >= deadline:
                code, what = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
            else:
                code, what = grpc.StatusCode.CANCELLED, "cancelled by client"
            self._count(method, code)
            log.info("%s %s", what_, what, extra=fields)
            return
        self._abort(context, method, error, fields)

    def _decode(
        self,
        request: decoder_pb2.DecodeRequest,
        context: grpc.ServicerContext,
        deadline: float,
        arrived: float,
        outcome: dict,
    ) -> Iterator[decoder_pb2.DecodeEvent]:
        began = time.perf_counter()
        if isinstance(request, Undecodable):
            raise InputError(request.describe())
        principal = self._authenticate(context)
        outcome["client"] = principal.client
        served = find_model(request.model_fingerprint, self._served, principal.models)
        outcome["model"] = served.name
        principal.check_model(served.fingerprint)  # before the tensor is even decoded
        job = validate_request(request, self._served, time.perf_counter)
        stages = self._stages(served.name)
        stages["codec"].observe(job.codec_s)
        stages["validate"].observe(time.perf_counter() - began - job.codec_s)
        engine = self._engines[served.fingerprint]
        self._limiter.acquire(principal.client)
        try:
            stream = engine.submit(job, arrived, deadline)
            # Who answers, before any token: the edge names the replica when it checks the stream.
            context.send_initial_metadata(((REPLICA_KEY, self._replica_id),))
            if not context.add_callback(lambda: engine.cancel(stream)):
                engine.cancel(stream)  # the call ended before we could watch it
            yield from self._relay(stream, engine, context, served, outcome, stages["send"])
        finally:
            self._limiter.release(principal.client)

    # -- Handoff -----------------------------------------------------------------------------

    def Handoff(
        self, requests: Iterator[decoder_pb2.HandoffRequest], context: grpc.ServicerContext
    ) -> Iterator[decoder_pb2.HandoffEvent]:
        arrived = self._clock()
        deadline = arrived + self._remaining_s(context)
        outcome = _outcome("")
        body = self._handoff(requests, context, deadline, outcome)
        yield from self._serve("Handoff", body, context, arrived, deadline, outcome)

    def _handoff(
        self,
        requests: Iterator[decoder_pb2.HandoffRequest],
        context: grpc.ServicerContext,
        deadline: float,
        outcome: dict,
    ) -> Iterator[decoder_pb2.HandoffEvent]:
        """``start`` -> checks -> ``accepted`` -> the device's prefix -> Decode's stream.

        Admission delivered ``start`` in time (``Lane.stream_first_message``); the prefix is
        waited for here, at most ``handoff_prefix_timeout_s``. The cloud never decodes what
        the device already has: the job joins the batch with the prefix forced."""
        first = next(requests, None)
        if first is None:
            return  # the call ended before its first message (admission answered it)
        if isinstance(first, Undecodable):
            raise InputError(first.describe())
        if first.WhichOneof("message") != "start":
            raise InputError(
                f"the first Handoff message must be start, got {first.WhichOneof('message')}"
            )
        request = first.start
        outcome["request_id"] = request.request_id[:128]
        principal = self._authenticate(context)
        outcome["client"] = principal.client
        served = find_model(request.model_fingerprint, self._served, principal.models)
        outcome["model"] = served.name
        principal.check_model(served.fingerprint)
        began = time.perf_counter()
        job = validate_handoff_start(request, self._served, time.perf_counter)
        stages = self._stages(served.name)
        stages["codec"].observe(job.codec_s)
        stages["validate"].observe(time.perf_counter() - began - job.codec_s)
        engine = self._engines[served.fingerprint]
        self._limiter.acquire(principal.client)
        try:
            context.send_initial_metadata(((REPLICA_KEY, self._replica_id),))
            yield decoder_pb2.HandoffEvent(accepted=decoder_pb2.HandoffAccepted())
            accepted = self._clock()
            message = self._prefix_message(requests, context, deadline, outcome)
            if message is None:
                return  # cancelled: by the client, or for want of a prefix in time
            arrived = self._clock()
            self._metrics.handoff_prefix_wait.labels(served.name).observe(arrived - accepted)
            if isinstance(message, Undecodable):
                raise InputError(message.describe())
            if message is _HALF_CLOSED:
                raise InputError("the client half-closed the Handoff without a prefix message")
            if message.WhichOneof("message") != "prefix":
                raise InputError(
                    "the second Handoff message must be prefix, got "
                    f"{message.WhichOneof('message')}"
                )
            job = with_prefix(job, message.prefix.ids)
            self._metrics.handoff_prefix_tokens.labels(served.name).observe(job.start)
            stream = engine.submit(job, arrived, deadline)
            if not context.add_callback(lambda: engine.cancel(stream)):
                engine.cancel(stream)
            # Not paced: the device stops decoding once the cloud's stream passes it, so a
            # Handoff's tokens are held no longer than stream_interval_ms, however busy.
            yield from self._relay(
                stream,
                engine,
                context,
                served,
                outcome,
                stages["send"],
                decoder_pb2.HandoffEvent,
                paced=False,
            )
        finally:
            self._limiter.release(principal.client)

    def _prefix_message(
        self,
        requests: Iterator[decoder_pb2.HandoffRequest],
        context: grpc.ServicerContext,
        deadline: float,
        outcome: dict,
    ):
        """The call's next message, ``_HALF_CLOSED``, or None when the call was cancelled — by
        its client, or here, once ``handoff_prefix_timeout_s`` (or the deadline) passed."""
        with self._watchdog_lock:
            if self._watchdog is None:
                self._watchdog = Watchdog(self._clock)
        wait_s = max(0.0, min(self._handoff_prefix_timeout_s, deadline - self._clock()))
        timed_out = threading.Event()

        def too_slow() -> None:
            timed_out.set()
            context.cancel()

        alarm = self._watchdog.after(wait_s, too_slow)
        try:
            message = next(requests, _HALF_CLOSED)
        except grpc.RpcError:
            message = None
        finally:
            alarm.cancel()
        if timed_out.is_set() or (message is _HALF_CLOSED and not context.is_active()):
            # A cancelled call's request stream simply ends: that is no half-close.
            if timed_out.is_set():
                log.info("handoff prefix timeout", extra={**outcome, "s": round(wait_s, 3)})
            return None
        return message

    def _relay(
        self,
        stream: Stream,
        engine: Engine,
        context: grpc.ServicerContext,
        served: ServedModel,
        outcome: dict,
        send: Any,
        event_type: type = decoder_pb2.DecodeEvent,
        paced: bool = True,
    ) -> Iterator:
        """Engine updates -> ``event_type`` messages (DecodeEvent, HandoffEvent: both carry
        ``tokens`` and ``final``), as they come; returns when the stream ends.

        ``send`` (the stage histogram) times each ``yield``: gRPC serializes and writes the
        message before it asks for the next one. Between two token messages the engine holds
        the stream's tokens: ``Pacing.hold_s`` if ``paced``, else ``stream_interval_ms``."""
        carry: _Event = None
        pacing = self._pacing[served.fingerprint]
        while True:
            if carry is not None:
                item, carry = carry, None
            else:
                try:
                    item = stream.events.get(timeout=_POLL_S)
                except queue.Empty:
                    if not context.is_active():
                        engine.cancel(stream)
                        return
                    continue
            item, carry = _coalesce(item, stream)
            if item is None:
                return  # cancelled: the client is gone, nobody to send to
            if isinstance(item, ModelFailure):
                raise item
            if item.tokens:
                outcome["tokens"] += len(item.tokens)
                self._metrics.tokens.labels(served.name).inc(len(item.tokens))
                sending, cpu = time.perf_counter(), time.thread_time()
                yield event_type(tokens=decoder_pb2.TokenChunk(start=item.start, ids=item.tokens))
                send.observe(time.perf_counter() - sending)
                if item.finish is None:
                    pacing.observe(time.thread_time() - cpu)
                    engine.release(stream, pacing.hold_s(engine.active) if paced else pacing.min_s)
            if item.finish is not None:
                outcome["reason"] = item.finish
                self._metrics.finishes.labels(served.name, item.finish).inc()
                sending = time.perf_counter()
                yield event_type(
                    final=decoder_pb2.DecodeFinal(
                        reason=finish_to_proto(item.finish),
                        queue_ms=item.queue_ms,
                        decode_ms=item.decode_ms,
                        token_count=item.token_count,
                        replica_id=self._replica_id,
                    )
                )
                send.observe(time.perf_counter() - sending)
                return

    # -- ListModels --------------------------------------------------------------------------

    def ListModels(
        self, request: decoder_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.ListModelsResponse:
        try:
            if isinstance(request, Undecodable):
                raise InputError(request.describe())
            principal = self._authenticate(context)
        except Exception as exc:
            self._abort(context, "ListModels", exc, {})
        models = [
            _model_info(m)
            for m in self._served.values()
            if principal.models is None or m.fingerprint in principal.models
        ]
        self._count("ListModels", grpc.StatusCode.OK)
        return decoder_pb2.ListModelsResponse(models=models)

    # -- shared ------------------------------------------------------------------------------

    def _stages(self, model: str) -> dict:
        stages = self._stage_timers.get(model)
        if stages is None:
            stages = self._stage_timers[model] = self._metrics.stages(model)
        return stages

    def _authenticate(self, context: grpc.ServicerContext) -> Principal:
        return self._auth.authenticate(
            context.invocation_metadata() or (),
            tls_identity(context.auth_context() or {}),
            context.peer() or "",
        )

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self._metrics.requests.labels(method, code.name).inc()
        if code is not grpc.StatusCode.OK:
            self._metrics.errors.labels(method, code.name).inc()

    def _abort(
        self, context: grpc.ServicerContext, method: str, exc: BaseException, fields: dict
    ) -> None:
        code = status_code(exc)
        self._count(method, code)
        trailers = [(REPLICA_KEY, self._replica_id)]
        if code is grpc.StatusCode.INTERNAL:
            log.error(
                "%s failed inside the replica",
                method,
                exc_info=not isinstance(exc, ModelFailure),
                extra={**fields, "error": f"{type(exc).__name__}: {exc}"},
            )
            message = (
                f"internal error on replica {self._replica_id} "
                f"(request_id {fields.get('request_id', '-')!r}); the request may be retried"
            )
        else:
            log.info("%s refused", method, extra={**fields, "code": code.name, "error": str(exc)})
            message = str(exc)
        if isinstance(exc, Overloaded):
            retry_ms = str(max(1, round(exc.retry_after_s * 1000)))
            trailers += [(RETRY_AFTER_KEY, retry_ms), (PUSHBACK_KEY, retry_ms)]
        context.set_trailing_metadata(trailers)
        context.abort(code, message)


def _coalesce(item: _Event, stream: Stream) -> tuple[_Event, _Event]:
    """``item`` merged with the token updates waiting behind it, to go as one message; and
    the first event that could not be merged (a failure or cancellation), if any.

    Why: the engine hands a stream tokens only when its handler asked for them (see
    ``Engine.release``) or the stream ended, but a final may land right behind the update
    that woke the handler, and one message is cheaper than two. Updates of one stream are
    contiguous by construction (``start`` of the next = ``start + len(tokens)`` of this one).
    """
    if not isinstance(item, Update) or item.finish is not None:
        return item, None
    merged: list[int] = []
    following: _Event = None
    while True:
        try:
            following = stream.events.get_nowait()
        except queue.Empty:
            following = None
            break
        if not isinstance(following, Update):
            break  # tokens first, then the end
        merged += following.tokens
        if following.finish is not None:
            return replace(following, start=item.start, tokens=item.tokens + tuple(merged)), None
    if merged:
        item = replace(item, tokens=item.tokens + tuple(merged))
    return item, following


def _model_info(model: ServedModel) -> decoder_pb2.ModelInfo:
    manifest = model.manifest
    return decoder_pb2.ModelInfo(
        name=model.name,
        fingerprint=model.fingerprint,
        hidden_size=manifest.dims.hidden_size,
        vocab_size=manifest.dims.vocab_size,
        max_source_length=manifest.dims.max_source_length,
        max_new_tokens=model.max_new_tokens,
        eos_token_id=manifest.tokens.eos,
        decoder_start_token_id=manifest.tokens.decoder_start,
        languages=dict(manifest.languages),
        codecs=[codec_to_proto(c) for c in ACCEPTED_CODECS],
        compressions=[compression_to_proto(c) for c in ACCEPTED_COMPRESSIONS],
    )


__all__ = [
    "PUSHBACK_KEY",
    "REPLICA_KEY",
    "RETRY_AFTER_KEY",
    "STATUS_CODES",
    "DecoderServicer",
    "status_code",
]
