"""The edge agent's request pipeline: tokenize → encode → observe → decide → decode, never lost.

For each request the encoder runs here; the policy picks LOCAL or CLOUD from what the probes
measured; CLOUD streams tokens back from the decoder service. Whatever happens to the cloud —
never reachable, too slow to give a first token (hedge), cut mid-stream, wrong model — the
request is finished locally, from the tokens already received (prefix forcing), so the app
always gets the same answer an all-local greedy decode would give.

``Agent.generate`` is a generator of ``Piece`` and, last, ``Outcome``: the gRPC servicer and
the Python API stream from it. Closing the generator (the app went away) cancels whatever is
still running.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tandem import wire
from tandem.defaults import PROFILES_DIR, bundle_path
from tandem.edge.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tandem.edge.cloud_client import CloudClient, CloudOutcome
from tandem.edge.config import EdgeConfig
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.probes import DeviceLoadProbe, ping_beat
from tandem.edge.stream_check import StreamLimits
from tandem.errors import (
    CloudDeadline,
    CloudError,
    CloudUnavailable,
    CloudViolation,
    FingerprintMismatch,
    InputError,
    StreamBroken,
)
from tandem.policy import (
    Decision,
    LengthModel,
    NetworkState,
    Observations,
    PolicyState,
    Profile,
    Route,
    decide,
    estimate,
    load_from_timing,
    observe_length,
    observe_outcome,
    observe_probe_result,
    observe_probe_sent,
    observe_ttft,
    observe_upload,
    predict_length,
    remember,
)
from tandem.runtime import codec as codec_mod
from tandem.runtime.decoding import GenerationParams
from tandem.runtime.seq2seq import Seq2Seq
from tandem.yamlfile import read_yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What an app asks for."""

    text: str
    target: str | None = None
    max_new_tokens: int | None = None
    local_only: bool = False
    deadline_s: float | None = None
    request_id: str = ""


@dataclass(frozen=True)
class Piece:
    """New output: tokens ``ids`` starting at generated index ``start``."""

    start: int
    ids: list[int]


@dataclass
class Outcome:
    """The final event of a request."""

    request_id: str
    route: str
    """Route that produced the answer: ``local`` or ``cloud``."""
    reason: str
    """The policy's reason for its decision."""
    decision: str
    """What the policy decided (``local``/``cloud``); differs from route after a fallback."""
    fallbacks: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish: str = "eos"
    encode_ms: float = 0.0
    upload_ms: float = 0.0
    first_token_ms: float = 0.0
    total_ms: float = 0.0


def _load_profile(path: str | Path, where: str) -> Profile:
    return Profile.from_dict(read_yaml(path, where), where=str(path))


class _LocalRun:
    """Local decoding in a thread, streaming into the request's event queue; cancellable."""

    def __init__(self, agent: Agent, hidden, params: GenerationParams, events: queue.Queue):
        self.cancel = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(agent, hidden, params, events), daemon=True
        )
        self._thread.start()

    def _run(self, agent: Agent, hidden, params, events: queue.Queue) -> None:
        try:
            tokens: list[int] = []
            finish = "length"
            if not params.prefix and params.forced_first_token is not None:
                events.put(("local_tokens", 0, [params.forced_first_token]))
            for result in agent.model.stream(hidden, params):
                if self.cancel.is_set():
                    return
                if result.finish == "eos":
                    finish = "eos"
                    break
                tokens.append(result.token)
                events.put(("local_tokens", result.index, [result.token]))
                if result.finish is not None:
                    finish = result.finish
            events.put(("local_done", (params.start_tokens() + tokens, finish)))
        except Exception as exc:  # surfaced to the request; local failure is a real error
            events.put(("local_error", exc))


class Agent:
    """One per device: the model, the probes, the policy state and the cloud client."""

    def __init__(self, config: EdgeConfig, model: Seq2Seq | None = None) -> None:
        self.config = config
        if model is None:  # a daemon's own model: warm before the first request (see warm_up)
            model = Seq2Seq.load(bundle_path(config.bundle), config.session)
            log.info("model warm", extra={"warm_up_ms": round(model.warm_up(), 1)})
        self.model = model
        self.metrics = EdgeMetrics()
        device = _load_profile(
            config.device_profile or PROFILES_DIR / "device.yaml", "device_profile"
        )
        self.device_profile = device.scaled(config.device_speed_factor)
        self.cloud_profile = _load_profile(
            config.cloud_profile or PROFILES_DIR / "cloud.yaml", "cloud_profile"
        )
        self.codec, self.compression = codec_mod.parse_codec_spec(config.cloud.codec)
        # The policy prices uploads with the codec actually used on the wire.
        self.policy = dataclasses.replace(config.policy, codec=self.codec.value)
        self._lock = threading.Lock()
        self._net = NetworkState()
        self._lengths = LengthModel()
        self._policy_state: PolicyState | None = None
        self._cloud_queue_ms = 0.0
        self._ids = itertools.count()
        self._slots = threading.BoundedSemaphore(config.max_concurrent)
        self.breaker = CircuitBreaker(
            BreakerConfig(
                config.cloud.breaker.failure_threshold, config.cloud.breaker.reset_timeout_s
            )
        )
        self.cloud: CloudClient | None = None
        if config.cloud.enabled:
            # Every cloud stream is checked against this bundle (edge/stream_check.py).
            self.cloud = CloudClient(
                config.cloud, limits=StreamLimits.from_manifest(model.manifest)
            )
        self.load = DeviceLoadProbe()
        self._stop = threading.Event()
        self._pinger: threading.Thread | None = None
        if self.cloud is not None and config.cloud.ping_interval_s > 0:
            self._pinger = threading.Thread(target=self._ping_loop, daemon=True)
            self._pinger.start()

    # -- probes --------------------------------------------------------------------------------

    def _ping_loop(self) -> None:
        """A ping every ``ping_interval_s`` on a fixed beat of the monotonic clock.

        A fixed beat (not "interval after the last answer") keeps the probe rate the same
        whether the link is up or down, so an outage is seen at most one interval plus one
        timeout after it starts — as the simulator's probes see it. The beat is the clock's,
        not the agent's start (``probes.ping_beat``), so the emulator can line a trace up
        with it.
        """
        interval = self.config.cloud.ping_interval_s
        timeout = self.config.cloud.effective_ping_timeout_s
        beat = ping_beat(time.monotonic(), interval)
        while not self._stop.wait(max(0.0, beat * interval - time.monotonic())):
            sent = time.monotonic()
            self._observe(lambda s, c, t=sent: observe_probe_sent(s, t))
            try:
                rtt_ms = self.cloud.ping(timeout_s=timeout)
            except CloudError:
                rtt_ms = None
            now = time.monotonic()
            self._observe(lambda s, c, t=now, r=rtt_ms: observe_probe_result(s, t, r, c))
            beat = max(beat + 1, ping_beat(now, interval))  # a late beat is skipped

    def _observe(self, update) -> None:
        with self._lock:
            self._net = update(self._net, self.policy.estimators)
            est = estimate(self._net, time.monotonic(), self.policy.estimators)
        self.metrics.estimates(est, self.breaker.state(time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self.load.close()
        if self.cloud is not None:
            self.cloud.close()

    # -- the pipeline --------------------------------------------------------------------------

    def observations(
        self, src_len: int, target: str | None, local_only: bool, encode_ms: float = 0.0
    ) -> Observations:
        now = time.monotonic()
        with self._lock:
            est = estimate(self._net, now, self.policy.estimators)
            predicted = predict_length(self._lengths, target or "", src_len, self.policy.length)
            queue_ms = self._cloud_queue_ms
        breaker = self.breaker.state(now)
        # An outage ends with a success; when the breaker lets its probe through (half-open),
        # the cloud counts as online again so that probe can happen even without pings.
        online = self.cloud is not None and (not est.outage or breaker is BreakerState.HALF_OPEN)
        return Observations(
            src_len=src_len,
            predicted_tokens=predicted.tokens,
            predicted_tokens_sd=predicted.sd,
            online=online,
            breaker_open=breaker is BreakerState.OPEN,
            local_only=local_only,
            rtt_ms=est.rtt_ms,
            rtt_high_ms=est.rtt_high_ms,
            uplink_bps=est.uplink_bps,
            uplink_low_bps=est.uplink_low_bps,
            loss_rate=est.loss_rate,
            # Load of other processes (psutil), or what the encoder's own timing implies
            # against this device's profile, whichever says the device is busier.
            cpu_load=max(
                self.load.other_load(),
                load_from_timing(encode_ms, self.device_profile.encoder_ms(src_len)),
            ),
            cloud_queue_ms=queue_ms,
        )

    def route(self, obs: Observations) -> Decision:
        with self._lock:
            decision = decide(
                obs, self.device_profile, self.cloud_profile, self.policy, self._policy_state
            )
            self._policy_state = remember(self._policy_state or PolicyState(), decision)
        return decision

    def generate(self, request: Request) -> Iterator[Piece | Outcome]:
        """Stream the answer to one request; the last item is its ``Outcome``."""
        start = time.monotonic()
        rid = request.request_id or f"edge-{uuid.uuid4().hex[:12]}"
        if len(request.text) > self.config.max_text_chars:
            raise InputError(
                f"text has {len(request.text)} characters; the limit is {self.config.max_text_chars}"
            )
        ids = self.model.tokenize(request.text)
        params = self.model.params(request.target, request.max_new_tokens)
        with self._slots:
            t_enc = time.monotonic()
            hidden = self.model.encode(ids)  # (S, D) float32
            encode_ms = (time.monotonic() - t_enc) * 1000
            obs = self.observations(len(ids), request.target, request.local_only, encode_ms)
            decision = self.route(obs)
            outcome = Outcome(
                request_id=rid,
                route=decision.route.value,
                reason=decision.reason,
                decision=decision.route.value,
                encode_ms=encode_ms,
            )
            log.info(
                "decision",
                extra={"request_id": rid, "route": decision.route.value, "reason": decision.reason},
            )
            if decision.route is Route.CLOUD and self.cloud is not None and not request.local_only:
                if self.breaker.allow(time.monotonic()):
                    yield from self._cloud(rid, ids, hidden, params, decision, outcome, request)
                else:
                    outcome.fallbacks.append("breaker_open")
                    yield from self._local(hidden, params, outcome)
            else:
                yield from self._local(hidden, params, outcome)
        outcome.text = self.model.detokenize(outcome.ids) or ""
        outcome.total_ms = (time.monotonic() - start) * 1000
        with self._lock:
            self._lengths = observe_length(
                self._lengths,
                request.target or "",
                len(ids),
                len(outcome.ids) + (outcome.finish == "eos"),  # decoder steps, EOS included
                self.policy.length,
            )
        self.metrics.finished(outcome)
        log.info(
            "answered",
            extra={
                "request_id": rid,
                "route": outcome.route,
                "fallbacks": ",".join(outcome.fallbacks),
                "tokens": len(outcome.ids),
                "total_ms": round(outcome.total_ms, 1),
            },
        )
        yield outcome

    def _local(self, hidden, params: GenerationParams, outcome: Outcome) -> Iterator[Piece]:
        outcome.route = "local"
        t0 = time.monotonic()
        tokens = params.start_tokens()
        if tokens:
            yield Piece(0, list(tokens))
        for result in self.model.stream(hidden, params):
            if result.finish == "eos":
                outcome.finish = "eos"
                break
            if not outcome.first_token_ms:
                outcome.first_token_ms = (time.monotonic() - t0) * 1000
            tokens.append(result.token)
            yield Piece(result.index, [result.token])
            if result.finish is not None:
                outcome.finish = result.finish
        outcome.ids = tokens

    def _deadline_s(self, decision: Decision, request: Request) -> float:
        settings = self.config.cloud
        predicted = (
            decision.cloud_ms / 1000.0 if np.isfinite(decision.cloud_ms) else settings.deadline_s
        )
        deadline = min(
            settings.deadline_s, max(3.0 * predicted, 2 * settings.first_token_timeout_s)
        )
        if request.deadline_s is not None:
            deadline = min(deadline, request.deadline_s)
        return max(deadline, 0.05)

    def _cloud(
        self,
        rid: str,
        ids: list[int],
        hidden,
        params: GenerationParams,
        decision: Decision,
        outcome: Outcome,
        request: Request,
    ) -> Iterator[Piece]:
        settings = self.config.cloud
        enc = codec_mod.encode(hidden, self.codec, self.compression)
        message = wire.build_decode_request(
            request_id=rid,
            model_fingerprint=self.model.fingerprint,
            hidden_states=enc,
            source_length=len(ids),
            max_new_tokens=params.max_new_tokens,
            forced_first_token=params.forced_first_token,
        )
        nbytes = message.ByteSize()
        deadline_s = self._deadline_s(decision, request)
        call = self.cloud.call(message, deadline_s)
        events: queue.Queue = queue.Queue()
        sent = time.monotonic()

        def run_cloud() -> None:
            try:
                result = call.run(lambda start, chunk: events.put(("cloud_tokens", start, chunk)))
                events.put(("cloud_done", result))
            except (CloudError, FingerprintMismatch) as exc:
                events.put(("cloud_error", exc))
            except Exception as exc:  # a bug in the client must not lose the request
                log.exception("cloud client failed", extra={"request_id": rid})
                events.put(("cloud_error", CloudUnavailable(f"cloud client error: {exc}")))

        threading.Thread(target=run_cloud, daemon=True).start()
        hedge_s = (
            decision.hedge_deadline_ms / 1000.0
            if decision.hedge_deadline_ms is not None
            else settings.first_token_timeout_s
        )
        hedging = decision.hedge_deadline_ms is not None
        emitted: list[int] = []
        cloud_tokens: list[int] = []
        local: _LocalRun | None = None
        cloud_alive = True
        first_token_at: float | None = None
        try:
            while True:
                timeout = None
                if first_token_at is None and local is None and cloud_alive:
                    timeout = max(0.0, sent + hedge_s - time.monotonic())
                try:
                    event = events.get(timeout=timeout)
                except queue.Empty:
                    # No first token in time: start local decoding now. With a hedge the cloud
                    # keeps going and the first to finish wins; without, the cloud is dropped.
                    reason = "hedge" if hedging else "first_token_timeout"
                    outcome.fallbacks.append(reason)
                    self.metrics.fallback(reason)
                    self._observe_failure(sent, nbytes, finished=False)
                    if not hedging:
                        call.cancel()
                        cloud_alive = False
                        self.breaker.record_failure(time.monotonic())
                    local = _LocalRun(self, hidden, params, events)
                    continue
                kind = event[0]
                if kind in ("cloud_tokens", "local_tokens"):
                    start_index, chunk = event[1], event[2]
                    if kind == "cloud_tokens":
                        if first_token_at is None:
                            first_token_at = time.monotonic()
                            outcome.first_token_ms = (first_token_at - sent) * 1000
                        cloud_tokens.extend(chunk)
                    elif first_token_at is None:
                        first_token_at = time.monotonic()
                        outcome.first_token_ms = (first_token_at - sent) * 1000
                    for offset, token in enumerate(chunk):
                        if start_index + offset == len(emitted):
                            emitted.append(token)
                            yield Piece(start_index + offset, [token])
                elif kind == "cloud_done":
                    result: CloudOutcome = event[1]
                    if local is not None:
                        local.cancel.set()
                    self._observe_success(result, sent, nbytes)
                    outcome.route = "cloud"
                    outcome.ids = result.tokens
                    outcome.finish = _finish_name(result.final)
                    outcome.upload_ms = self._upload_ms(result)
                    yield from self._catch_up(emitted, result.tokens)
                    return
                elif kind == "cloud_error":
                    exc = event[1]
                    cloud_alive = False
                    if call.cancelled:
                        continue  # we cancelled it (hedge lost or timeout): nothing learnt
                    reason = self._observe_error(exc, sent, nbytes)
                    if local is not None:
                        continue  # the hedge is already decoding locally
                    outcome.fallbacks.append(reason)
                    self.metrics.fallback(reason)
                    prefix = list(exc.tokens) if isinstance(exc, StreamBroken) else []
                    if len(prefix) >= params.max_new_tokens:
                        outcome.route = "cloud"
                        outcome.ids = prefix
                        outcome.finish = "length"
                        return
                    resume = GenerationParams(
                        max_new_tokens=params.max_new_tokens,
                        min_new_tokens=params.min_new_tokens,
                        forced_first_token=params.forced_first_token,
                        eos_token_id=params.eos_token_id,
                        prefix=tuple(prefix),
                    )
                    log.info(
                        "fallback",
                        extra={"request_id": rid, "reason": reason, "tokens": len(prefix)},
                    )
                    local = _LocalRun(self, hidden, resume, events)
                elif kind == "local_done":
                    tokens, finish = event[1]
                    if cloud_alive:
                        call.cancel()
                    outcome.route = "local"
                    outcome.ids = tokens
                    outcome.finish = finish
                    yield from self._catch_up(emitted, tokens)
                    return
                elif kind == "local_error":
                    raise event[1]
        finally:
            if cloud_alive:
                call.cancel()
            if local is not None:
                local.cancel.set()

    @staticmethod
    def _catch_up(emitted: list[int], tokens: list[int]) -> Iterator[Piece]:
        if emitted != tokens[: len(emitted)]:
            log.warning("routes diverged", extra={"emitted": len(emitted), "tokens": len(tokens)})
        for index in range(len(emitted), len(tokens)):
            emitted.append(tokens[index])
            yield Piece(index, [tokens[index]])

    # -- feeding the estimators ---------------------------------------------------------------

    def _upload_ms(self, result: CloudOutcome) -> float:
        if result.ttft_s is None or result.final is None:
            return 0.0
        with self._lock:
            est = estimate(self._net, time.monotonic(), self.policy.estimators)
        rtt_ms = est.rtt_ms or 0.0
        server_first_ms = result.final.queue_ms + (
            result.final.decode_ms / max(result.final.token_count, 1)
        )
        return max(result.ttft_s * 1000 - rtt_ms - server_first_ms, 0.1)

    def _observe_success(self, result: CloudOutcome, sent: float, nbytes: int) -> None:
        now = time.monotonic()
        upload_ms = self._upload_ms(result)
        ttft_ms = (result.ttft_s or 0.0) * 1000

        def update(state, cfg):
            state = observe_outcome(state, now, True, cfg)
            if result.ttft_s is not None:
                state = observe_ttft(state, now, ttft_ms, cfg)
                state = observe_upload(state, now, nbytes, upload_ms / 1000, cfg)
            return state

        self._observe(update)
        if result.final is not None:
            with self._lock:
                self._cloud_queue_ms = result.final.queue_ms
        self.breaker.record_success(now)

    def _observe_failure(self, sent: float, nbytes: int, finished: bool) -> None:
        now = time.monotonic()
        seconds = now - sent

        def update(state, cfg):
            state = observe_outcome(state, now, False, cfg)  # late counts as lost, now
            return observe_upload(state, now, nbytes, seconds, cfg, finished=finished)

        self._observe(update)

    def _observe_error(self, exc: Exception, sent: float, nbytes: int) -> str:
        now = time.monotonic()
        if isinstance(exc, CloudViolation):  # the replica broke the contract: its fault
            reason = "cloud_violation"
            self.metrics.violation(exc.reason)
            log.warning(
                "cloud violation",
                extra={"replica": exc.replica, "violation": exc.reason, "tokens": len(exc.tokens)},
            )
        elif isinstance(exc, StreamBroken):
            reason = "stream_broken"
        elif isinstance(exc, FingerprintMismatch):
            reason = "fingerprint_mismatch"
        elif isinstance(exc, CloudUnavailable):
            reason = "cloud_unavailable"
        else:
            reason = "cloud_rejected"
        log.warning("cloud failed", extra={"reason": reason, "error": str(exc)})
        if isinstance(exc, CloudDeadline):
            # The same news as our own first-token timeout (which fires at about the same
            # moment when the two are equal): whatever raced first, the estimators learn it.
            self._observe_failure(sent, nbytes, finished=False)
        else:
            self._observe(lambda s, c: observe_outcome(s, now, False, c))
        self.breaker.record_failure(now)
        return reason


def _finish_name(final) -> str:
    if final is None:
        return "length"
    from tandem.v1 import decoder_pb2

    return "eos" if final.reason == decoder_pb2.FINISH_REASON_EOS else "length"
