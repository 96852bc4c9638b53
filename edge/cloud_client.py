"""The agent's client of the cloud decoder: one long-lived channel, bounded retries, clear errors.

Rules it keeps (DESIGN.md "Principles"):
* every call has a deadline (``timeout=``), and one deadline covers every attempt;
* retries only for transient status codes and only before the first token — after a token has
  been streamed the caller resumes locally from it instead, which is cheaper and never repeats
  output;
* gRPC errors are mapped back to the most specific ``CloudError`` with ``raise … from exc``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from tandem.edge.config import CloudSettings
from tandem.edge.stream_check import StreamCheck, StreamLimits
from tandem.errors import (
    CloudDeadline,
    CloudError,
    CloudUnavailable,
    CloudViolation,
    FingerprintMismatch,
    StreamBroken,
)
from tandem.v1 import decoder_pb2, decoder_pb2_grpc

log = logging.getLogger(__name__)

TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
REPLICA_KEY = "tandem-replica-id"
"""Initial (and trailing) metadata of a Decode call naming the replica that answers it."""
UNFINISHED = frozenset({decoder_pb2.FINISH_REASON_CANCELLED, decoder_pb2.FINISH_REASON_DEADLINE})
"""Final reasons of a stream the replica ended before the answer was complete."""


class _Transient(Exception):
    """Internal: an attempt failed in a way a retry may fix."""

    def __init__(self, exc: grpc.RpcError, retry_after_s: float = 0.0) -> None:
        super().__init__(str(exc))
        self.rpc_error = exc
        self.retry_after_s = retry_after_s


def _retry_after_s(exc: grpc.RpcError) -> float:
    try:
        for key, value in exc.trailing_metadata() or ():
            if key == "retry-after-ms":
                return float(value) / 1000.0
    except Exception:  # metadata may be unavailable on a channel-level failure
        pass
    return 0.0


def map_rpc_error(exc: grpc.RpcError, tokens: list[int] | None = None) -> CloudError:
    """The most specific CloudError for a gRPC failure (``tokens``: what arrived before it)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if tokens:
        return StreamBroken(f"cloud stream broke after {len(tokens)} tokens: {code}", tokens)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FingerprintMismatch(f"cloud does not serve this model: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CloudDeadline(f"cloud gave no token before the deadline: {details}")
    if code in TRANSIENT:
        return CloudUnavailable(f"cloud unavailable: {code.name if code else code}: {details}")
    if code == grpc.StatusCode.CANCELLED:
        return CloudUnavailable("cloud call cancelled")
    name = code.name if code else "UNKNOWN"
    return CloudError(f"cloud rejected the request: {name}: {details}")


@dataclass
class CloudOutcome:
    """What one cloud call produced."""

    tokens: list[int]
    """All generated tokens after the prefix sent, EOS excluded (the wire never carries it)."""
    final: decoder_pb2.DecodeFinal | None
    ttft_s: float | None
    """Seconds from sending the request to the first token."""
    attempts: int


@dataclass(frozen=True)
class RadioUse:
    """How long one call held the device's radio and what it moved, told once when the call
    ends (its final message, its failure, or our cancelling it): what the agent's energy
    knowledge learns (``AgentKnowledge.radio_used``)."""

    duration_s: float
    """From the call's start to its end."""
    up_bytes: int
    """Request bytes handed to the channel: each attempt's message, and a Handoff's prefix. A
    call dropped mid-upload counts its whole message: gRPC does not say how far it got."""
    tokens: int
    """Tokens received."""


class _RadioLedger:
    """What a call has held of the radio so far; reports a ``RadioUse`` once, at its end."""

    def __init__(self, client: CloudClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._began_s: float | None = None
        self._reported = False
        self.up_bytes = 0
        self.tokens = 0

    def began(self) -> None:
        self._began_s = time.monotonic()

    def end(self) -> None:
        """The call stopped using the radio (safe to call again, from any thread)."""
        with self._lock:
            if self._reported or self._began_s is None or not self.up_bytes:
                return
            self._reported = True
            use = RadioUse(time.monotonic() - self._began_s, self.up_bytes, self.tokens)
        if self._client.on_radio_use is not None:
            try:
                self._client.on_radio_use(use)
            except Exception:  # a ledger must never break the call it watches
                log.exception("radio use report failed")


class CloudCall:
    """One request's journey to the cloud; ``cancel()`` from any thread stops it."""

    def __init__(self, client: CloudClient, request: decoder_pb2.DecodeRequest, deadline_s: float):
        self._client = client
        self._request = request
        self._deadline_s = deadline_s
        self._lock = threading.Lock()
        self._call = None
        self.cancelled = False
        self.attempts = 0
        self._radio = _RadioLedger(client)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._call is not None:
                self._call.cancel()
        self._radio.end()

    def cancel_soon(self) -> None:
        """``cancel()`` by the client's canceller thread (see ``HandoffCall.cancel_soon``)."""
        with self._lock:
            self.cancelled = True
        self._client.cancel_later(self)

    @property
    def request_bytes(self) -> int:
        """Size of the request message: what one attempt uploads."""
        return self._request.ByteSize()

    def _open(self, remaining_s: float):
        with self._lock:
            if self.cancelled:
                raise CloudUnavailable("cloud call cancelled")
            self._call = self._client.stub.Decode(
                self._request,
                timeout=remaining_s,
                metadata=self._client.metadata,
                wait_for_ready=False,
            )
            self._radio.up_bytes += self._request.ByteSize()
            return self._call

    def run(self, on_tokens: Callable[[int, list[int]], None] | None = None) -> CloudOutcome:
        """Stream the call to its end; ``on_tokens(start, ids)`` sees each chunk as it arrives.
        Its end, however it comes, is reported to the client's ``on_radio_use``.

        Raises CloudUnavailable (CloudDeadline when the deadline passed) / FingerprintMismatch
        / CloudError before the first token and StreamBroken (carrying the tokens so far) after
        it, or when the replica ended the stream early (FINISH_REASON_CANCELLED, possibly with
        no token at all, or _DEADLINE after some).
        """
        self._radio.began()
        try:
            return self._run(on_tokens)
        finally:
            self._radio.end()

    def _run(self, on_tokens: Callable[[int, list[int]], None] | None) -> CloudOutcome:
        start = time.monotonic()
        end = start + self._deadline_s
        settings = self._client.settings
        tokens: list[int] = []
        ttft_s: float | None = None
        prefix_len = len(self._request.prefix)

        def first_event():
            self.attempts += 1
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise CloudDeadline("cloud deadline passed before the first token")
            call = self._open(remaining)
            iterator = iter(call)
            try:
                return call, iterator, next(iterator, None)
            except grpc.RpcError as exc:
                if exc.code() in TRANSIENT and not self.cancelled:
                    raise _Transient(exc, _retry_after_s(exc)) from exc
                raise map_rpc_error(exc) from exc

        def wait(retry_state) -> float:
            base = wait_random_exponential(
                multiplier=settings.backoff_initial_s, max=settings.backoff_max_s
            )(retry_state)
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            hint = exc.retry_after_s if isinstance(exc, _Transient) else 0.0
            return max(base, hint)

        retrying = Retrying(
            stop=stop_after_attempt(settings.max_attempts) | stop_before_delay(self._deadline_s),
            wait=wait,
            retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
            sleep=self._client.sleep,
            reraise=False,
        )
        try:
            call, iterator, event = retrying(first_event)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            rpc = last.rpc_error if isinstance(last, _Transient) else None
            if rpc is not None:
                raise map_rpc_error(rpc) from rpc
            raise CloudUnavailable(f"cloud unavailable after {self.attempts} attempts") from exc
        except _Transient as exc:  # only if tenacity re-raised directly
            raise map_rpc_error(exc.rpc_error) from exc
        final = None
        check = StreamCheck(self._request, self._client.limits, _replica(call, self._client))
        try:
            while event is not None:
                kind = event.WhichOneof("event")
                if kind == "tokens":
                    expected = prefix_len + len(tokens)
                    # Nothing reaches the caller before it is checked (CloudViolation carries
                    # the valid prefix, this chunk's good ids included).
                    chunk = check.chunk(event.tokens.start, list(event.tokens.ids))
                    if ttft_s is None:
                        ttft_s = time.monotonic() - start
                    tokens.extend(chunk)
                    self._radio.tokens = len(tokens)
                    if on_tokens is not None:
                        on_tokens(expected, chunk)
                elif kind == "final":
                    final = event.final
                    check.final(final)
                    break
                event = next(iterator, None)
        except CloudViolation as exc:
            call.cancel()  # a replica that broke the contract gets no further reading
            if exc.tokens[len(tokens) :] and on_tokens is not None:
                on_tokens(prefix_len + len(tokens), exc.tokens[len(tokens) :])
            raise
        except grpc.RpcError as exc:
            if self.cancelled:
                raise CloudUnavailable("cloud call cancelled") from exc
            if not tokens:
                raise map_rpc_error(exc) from exc
            raise StreamBroken(
                f"cloud stream broke after {len(tokens)} tokens: {exc.code().name}", tokens
            ) from exc
        if final is None:
            if self.cancelled:
                raise CloudUnavailable("cloud call cancelled")
            raise StreamBroken(
                f"cloud stream ended without a final event after {len(tokens)} tokens", tokens
            )
        call.cancel()  # nothing more to read; release the stream promptly
        if final.reason in UNFINISHED:
            # The replica stopped early (draining, or our deadline left it no time for another
            # step): the tokens are valid but the answer is not complete. Taking it as complete
            # would truncate the app's output; the caller resumes from the tokens instead.
            reason = decoder_pb2.FinishReason.Name(final.reason).removeprefix("FINISH_REASON_")
            if final.reason == decoder_pb2.FINISH_REASON_DEADLINE and not tokens:
                # No token before the deadline, as if the deadline had fired here: for the
                # caller's estimators that is the same news (the upload may have been slow).
                raise CloudDeadline("cloud deadline passed before the first token (replica)")
            raise StreamBroken(
                f"cloud stopped early ({reason.lower()}) after {len(tokens)} tokens", tokens
            )
        return CloudOutcome(tokens, final, ttft_s, self.attempts)


class HandoffUnsupported(CloudError):
    """The replica does not implement Decoder.Handoff (UNIMPLEMENTED): an older service. Not
    a failure of the link or of the replica; the agent stops asking for handoffs."""


class HandoffCall:
    """One Decoder.Handoff: the upload, the device's prefix when it lands, the cloud's stream.

    Never retried: local decoding runs from the start, so a failed attempt costs the request
    nothing but the cloud's help. ``cancel()`` from any thread stops it.
    """

    def __init__(
        self,
        client: CloudClient,
        request: decoder_pb2.DecodeRequest | Callable[[], decoder_pb2.DecodeRequest],
        deadline_s: float,
    ):
        """``request``: the message, or how to build it. A builder runs in the call's own
        thread (``run``), so encoding the hidden states and building the message are not on the
        device's way to its first local token (0.6 ms of a text request's 25 on a small CPU)."""
        self._client = client
        self._build = request if callable(request) else (lambda: request)
        self._request: decoder_pb2.DecodeRequest | None = None
        self._deadline_s = deadline_s
        self._lock = threading.Lock()
        self._call = None
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.attempts = 0
        self._radio = _RadioLedger(client)

    @property
    def request(self) -> decoder_pb2.DecodeRequest:
        """The start message, built on first use (by the call's thread, or whoever asks first)."""
        with self._lock:
            if self._request is None:
                self._request = self._build()
            return self._request

    @property
    def request_bytes(self) -> int:
        """Size of the start message (the hidden states' upload)."""
        return self.request.ByteSize()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._call is not None:
                self._call.cancel()
        self._outbox.put(None)  # ends the request stream, whatever it waits for
        self._radio.end()

    def cancel_soon(self) -> None:
        """``cancel()`` by the client's canceller thread, for a caller on a request's critical
        path: the call counts as cancelled at once (its thread reads any error as ours, its
        request stream ends), and gRPC's own cancel — about 0.4 ms on a small CPU, which a
        local run that won its race would otherwise add to the answer — follows off it."""
        with self._lock:
            self.cancelled = True
        self._outbox.put(None)
        self._client.cancel_later(self)

    def _requests(self):
        yield decoder_pb2.HandoffRequest(start=self.request)
        prefix = self._outbox.get()
        if prefix is not None:
            yield decoder_pb2.HandoffRequest(prefix=decoder_pb2.HandoffPrefix(ids=prefix))

    def run(
        self,
        prefix_now: Callable[[], list[int]],
        on_accepted: Callable[[list[int], float], None] | None = None,
        on_tokens: Callable[[int, list[int]], None] | None = None,
    ) -> CloudOutcome:
        """Stream the call to its end.

        On the acknowledgement, ``prefix_now()`` gives the tokens the device has at that
        moment; they are sent at once and ``on_accepted(prefix, monotonic_s)`` is told. Then
        ``on_tokens(start, ids)`` sees each checked chunk. The outcome's ``tokens`` follow the
        prefix. Raises as ``CloudCall.run`` does (StreamBroken's tokens follow the prefix too),
        HandoffUnsupported for a replica without the method, and CloudViolation (reason
        ``handoff_order``) for tokens before the acknowledgement or a second one. Its end,
        however it comes, is reported to the client's ``on_radio_use``.
        """
        self._radio.began()
        try:
            return self._run(prefix_now, on_accepted, on_tokens)
        finally:
            self._radio.end()

    def _run(self, prefix_now, on_accepted, on_tokens) -> CloudOutcome:
        start = time.monotonic()
        request = self.request
        with self._lock:
            if self.cancelled:
                raise CloudUnavailable("cloud call cancelled")
            self.attempts = 1
            call = self._call = self._client.stub.Handoff(
                self._requests(),
                timeout=self._deadline_s,
                metadata=self._client.metadata,
                wait_for_ready=False,
            )
            self._radio.up_bytes += request.ByteSize()
        tokens: list[int] = []
        ttft_s: float | None = None
        final = None
        check: StreamCheck | None = None
        prefix: list[int] = []
        try:
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "accepted":
                    if check is not None:
                        raise _order_violation(call, self._client, "a second acknowledgement")
                    prefix = list(prefix_now())
                    self._outbox.put(prefix)
                    prefix_message = decoder_pb2.HandoffPrefix(ids=prefix)
                    self._radio.up_bytes += decoder_pb2.HandoffRequest(
                        prefix=prefix_message
                    ).ByteSize()
                    check = StreamCheck(
                        request, self._client.limits, _replica(call, self._client), prefix
                    )
                    if on_accepted is not None:
                        on_accepted(prefix, time.monotonic())
                elif check is None:
                    raise _order_violation(call, self._client, f"{kind} before the acknowledgement")
                elif kind == "tokens":
                    expected = len(prefix) + len(tokens)
                    chunk = check.chunk(event.tokens.start, list(event.tokens.ids))
                    if ttft_s is None:
                        ttft_s = time.monotonic() - start
                    tokens.extend(chunk)
                    self._radio.tokens = len(tokens)
                    if on_tokens is not None:
                        on_tokens(expected, chunk)
                elif kind == "final":
                    final = event.final
                    check.final(final)
                    break
        except CloudViolation as exc:
            call.cancel()
            if exc.tokens[len(tokens) :] and on_tokens is not None:
                on_tokens(len(prefix) + len(tokens), exc.tokens[len(tokens) :])
            raise
        except grpc.RpcError as exc:
            if self.cancelled:
                raise CloudUnavailable("cloud call cancelled") from exc
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise HandoffUnsupported(f"the replica has no Handoff: {exc.details()}") from exc
            if not tokens:
                raise map_rpc_error(exc) from exc
            raise StreamBroken(
                f"cloud stream broke after {len(tokens)} tokens: {exc.code().name}", tokens
            ) from exc
        finally:
            self._outbox.put(None)
        call.cancel()  # nothing more to read; release the stream promptly
        if final is None:
            if self.cancelled:
                raise CloudUnavailable("cloud call cancelled")
            raise StreamBroken(
                f"cloud stream ended without a final event after {len(tokens)} tokens", tokens
            )
        if final.reason in UNFINISHED:
            reason = decoder_pb2.FinishReason.Name(final.reason).removeprefix("FINISH_REASON_")
            raise StreamBroken(
                f"cloud stopped early ({reason.lower()}) after {len(tokens)} tokens", tokens
            )
        return CloudOutcome(tokens, final, ttft_s, self.attempts)


def _order_violation(call, client: CloudClient, what: str) -> CloudViolation:
    replica = _replica(call, client)
    return CloudViolation(
        f"cloud stream from {replica} broke the contract (handoff_order: {what})",
        [],
        reason="handoff_order",
        replica=replica,
    )


class CloudClient:
    """One long-lived channel to the cloud replicas, shared by all requests."""

    def __init__(
        self,
        settings: CloudSettings,
        sleep: Callable[[float], None] = time.sleep,
        limits: StreamLimits | None = None,
        on_radio_use: Callable[[RadioUse], None] | None = None,
    ):
        self.settings = settings
        self.sleep = sleep
        self.limits = limits
        self.on_radio_use = on_radio_use
        """Told once per call, at its end, how long it held the radio and what it moved (the
        agent's energy knowledge); called from the call's thread or the canceller's."""
        """The edge bundle's vocabulary, EOS and length limit: every cloud stream is checked
        against them (``StreamCheck``); None checks only what the request itself says."""
        token = settings.bearer_token()
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.keepalive_time_ms", int(settings.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),  # retries are ours: bounded and token-aware
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if len(settings.addresses) > 1:
            target = "ipv4:" + ",".join(settings.addresses)
            options.append(("grpc.lb_policy_name", "round_robin"))
        else:
            target = settings.addresses[0]
        if settings.tls or settings.ca_file:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.ca_file),
                private_key=_read(settings.key_file),
                certificate_chain=_read(settings.cert_file),
            )
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = decoder_pb2_grpc.DecoderStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._cancels: queue.SimpleQueue = queue.SimpleQueue()
        self._canceller: threading.Thread | None = None
        self._canceller_lock = threading.Lock()

    def cancel_later(self, call: CloudCall | HandoffCall) -> None:
        """Cancel ``call`` from the canceller thread (started on first use): see
        ``HandoffCall.cancel_soon``."""
        with self._canceller_lock:
            if self._canceller is None:
                self._canceller = threading.Thread(
                    target=self._cancel_loop, name="cloud-canceller", daemon=True
                )
                self._canceller.start()
        self._cancels.put(call)

    def _cancel_loop(self) -> None:
        while (call := self._cancels.get()) is not None:
            try:
                call.cancel()
            except Exception:  # one call's cancel must not stop the others'
                log.exception("cancelling a cloud call failed")

    def call(self, request: decoder_pb2.DecodeRequest, deadline_s: float) -> CloudCall:
        return CloudCall(self, request, deadline_s)

    def handoff(
        self,
        request: decoder_pb2.DecodeRequest | Callable[[], decoder_pb2.DecodeRequest],
        deadline_s: float,
    ) -> HandoffCall:
        """A Handoff call; ``request`` may be a builder (see ``HandoffCall``)."""
        return HandoffCall(self, request, deadline_s)

    def connected(self) -> bool:
        """Whether the channel is READY right now, without waiting (a connectivity hint)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=0.001)
            return True
        except grpc.FutureTimeoutError:
            return False

    def ping(self, timeout_s: float = 1.0) -> float:
        """Round-trip time in ms of a grpc.health.v1 Check, or raises CloudUnavailable."""
        start = time.monotonic()
        try:
            self._health.Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=timeout_s,
                metadata=self.metadata,
            )
        except grpc.RpcError as exc:
            raise map_rpc_error(exc) from exc
        return (time.monotonic() - start) * 1000.0

    def list_models(self, timeout_s: float = 2.0) -> list[decoder_pb2.ModelInfo]:
        try:
            reply = self.stub.ListModels(
                decoder_pb2.ListModelsRequest(), timeout=timeout_s, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise map_rpc_error(exc) from exc
        return list(reply.models)

    def close(self) -> None:
        if self._canceller is not None:
            self._cancels.put(None)
            self._canceller.join(timeout=2.0)
        self.channel.close()


def _replica(call, client: CloudClient) -> str:
    """Who is streaming: the replica's id from initial metadata, else the configured target."""
    try:
        for key, value in call.initial_metadata() or ():
            if key == REPLICA_KEY:
                return str(value)[:128]
    except Exception:  # a fake or old replica may send none; the call may already be over
        pass
    return ",".join(client.settings.addresses)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()
