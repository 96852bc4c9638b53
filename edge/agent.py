"""The edge agent's request pipeline: tokenize → encode → observe → decide → route, never lost.

For each request the encoder runs here; the policy picks LOCAL, CLOUD or HANDOFF from what
the agent knows (``tandem.policy.knowledge``: the estimators fed by the probes and by past
calls, the length model); CLOUD races the decoder service's stream against local decoding
(``tandem.edge.race``); HANDOFF decodes locally at once while the cloud continues from the
device's progress, and keeps whichever stream is ahead (``HandoffRace``). Whatever happens to
the cloud — never reachable, too slow to give a first token (hedge), cut mid-stream, wrong
model — the request is finished locally, from the tokens already received (prefix forcing),
so the app always gets the same answer an all-local greedy decode would give.

``Agent.generate`` is a generator of ``Piece`` and, last, ``Outcome``: the gRPC servicer and
the Python API stream from it. Closing the generator (the app went away) cancels whatever is
still running.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tandem import wire
from tandem.defaults import PROFILES_DIR, bundle_path
from tandem.edge.audio_request import priced_profile, transcribe_request, upload_refusal
from tandem.edge.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tandem.edge.cloud_client import CloudClient
from tandem.edge.config import EdgeConfig
from tandem.edge.learning import AgentLearning
from tandem.edge.local_decode import LocalDecode, Piece
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.probes import DeviceLoadProbe, ping_on_beat
from tandem.edge.race import HandoffRace, Race, SentCall
from tandem.edge.stream_check import StreamLimits
from tandem.errors import CloudError, InputError
from tandem.policy import Decision, Observations, Profile, Route, decide
from tandem.policy.knowledge import AgentKnowledge
from tandem.runtime import codec as codec_mod
from tandem.runtime.decoding import GenerationParams
from tandem.runtime.seq2seq import Seq2Seq
from tandem.yamlfile import read_yaml

log = logging.getLogger(__name__)

__all__ = ["Agent", "Outcome", "Piece", "Request"]

RULED_LOCAL = frozenset({"local_only", "offline", "breaker_open", "byte_budget"})
"""Decision reasons ``cloud.force_route`` never overrides: rules, not preferences."""


@dataclass(frozen=True)
class Request:
    """What an app asks for."""

    text: str
    target: str | None = None
    audio: bytes | None = None
    """A WAV file's bytes, for a speech model (then ``text`` is empty)."""
    language: str | None = None
    """The spoken language of ``audio`` (None: detected, or none for an English-only model)."""
    max_new_tokens: int | None = None
    local_only: bool = False
    deadline_s: float | None = None
    request_id: str = ""


@dataclass
class Outcome:
    """The final event of a request."""

    request_id: str
    route: str
    """Route that produced the answer: ``local`` or ``cloud``."""
    reason: str
    """The policy's reason for its decision."""
    decision: str
    """What the policy decided (``local``/``cloud``/``handoff``); differs from route after a
    fallback, and a HANDOFF's route says which side finished the answer."""
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


class Agent(AgentLearning):
    """One per device: the model, the probes, what it knows, the breaker and the cloud client.

    Every measurement reaches ``self.knowledge`` through one of the learning entry points
    (``AgentLearning``, edge/learning.py), at the agent's clock (``clock``, monotonic seconds);
    the knowledge is shared by request threads and the pinger, hence one lock around it.
    """

    def __init__(self, config: EdgeConfig, model: Seq2Seq | None = None, clock=time.monotonic):
        self.config = config
        self.clock = clock
        if model is None:  # a daemon's own model: warm before the first request (see warm_up)
            model = Seq2Seq.load(bundle_path(config.bundle), config.session)
            log.info("model warm", extra={"warm_up_ms": round(model.warm_up(), 1)})
        self.model = model
        self.metrics = EdgeMetrics()
        device = _load_profile(
            config.device_profile or PROFILES_DIR / "device.yaml", "device_profile"
        )
        hidden_size = model.manifest.dims.hidden_size  # the policy prices uploads at it
        self.device_profile = priced_profile(device.scaled(config.device_speed_factor), hidden_size)
        self.cloud_profile = _load_profile(
            config.cloud_profile or PROFILES_DIR / "cloud.yaml", "cloud_profile"
        )
        self.codec, self.compression = codec_mod.parse_codec_spec(config.cloud.codec)
        # The policy prices uploads with the codec actually used on the wire.
        self.policy = dataclasses.replace(config.policy, codec=self.codec.value)
        self._lock = threading.Lock()
        self.knowledge = AgentKnowledge(
            self.policy, self.device_profile, network_type=config.network_type
        )
        self._slots = threading.BoundedSemaphore(config.max_concurrent)
        breaker = config.cloud.breaker
        self.breaker = CircuitBreaker(
            BreakerConfig(breaker.failure_threshold, breaker.reset_timeout_s)
        )
        self.cloud: CloudClient | None = None
        self._handoff_supported = True
        if config.cloud.enabled:
            # Every cloud stream is checked against this bundle (edge/stream_check.py).
            self.cloud = CloudClient(
                config.cloud,
                limits=StreamLimits.from_manifest(model.manifest),
                on_radio_use=self.radio_used,  # each call's end: the radio's state
            )
        self.load = DeviceLoadProbe()
        self._stop = threading.Event()
        self._pinger: threading.Thread | None = None
        if self.cloud is not None and config.cloud.ping_interval_s > 0:
            self._pinger = threading.Thread(
                target=ping_on_beat,
                args=(self._ping, config.cloud.ping_interval_s, self._stop),
                kwargs={"sent": self.probe_sent, "answered": self.probe_result},
                daemon=True,
            )
            self._pinger.start()

    def close(self) -> None:
        self._stop.set()
        self.load.close()
        if self.cloud is not None:
            self.cloud.close()

    def _ping(self) -> float | None:
        try:
            return self.cloud.ping(timeout_s=self.config.cloud.effective_ping_timeout_s)
        except CloudError:
            return None

    # -- the pipeline --------------------------------------------------------------------------

    def generate(self, request: Request) -> Iterator[Piece | Outcome]:
        """Stream the answer to one request; the last item is its ``Outcome``."""
        if request.audio is not None:  # a speech model's input: edge/audio_request.py
            yield from transcribe_request(self, request)
            return
        start = self.clock()
        rid = request.request_id or f"edge-{uuid.uuid4().hex[:12]}"
        if self.model.is_speech:
            raise InputError(f"text: bundle {self.model.manifest.name!r} is a speech model")
        if len(request.text) > self.config.max_text_chars:
            raise InputError(
                f"text has {len(request.text)} characters; the limit is {self.config.max_text_chars}"
            )
        ids = self.model.tokenize(request.text)
        params = self.model.params(request.target, request.max_new_tokens)
        with self._slots:
            t_enc = self.clock()
            hidden = self.model.encode(ids)  # (S, D) float32
            encode_ms = (self.clock() - t_enc) * 1000
            outcome = yield from self.decode_routed(rid, ids, hidden, params, request, encode_ms)
        outcome.text = self.model.detokenize(outcome.ids) or ""
        outcome.total_ms = (self.clock() - start) * 1000
        self.request_done(request.target, len(ids), outcome.ids, outcome.finish)
        self.finished(outcome)
        yield outcome

    def finished(self, outcome: Outcome) -> None:
        self.metrics.finished(outcome)
        log.info(
            "answered",
            extra={
                "request_id": outcome.request_id,
                "route": outcome.route,
                "fallbacks": ",".join(outcome.fallbacks),
                "tokens": len(outcome.ids),
                "total_ms": round(outcome.total_ms, 1),
            },
        )

    def decode_routed(
        self, rid, ids, hidden, params: GenerationParams, request: Request, encode_ms: float
    ) -> Generator[Piece, None, Outcome]:
        """Observe → decide → decode ``hidden`` (S, D) on the route decided, as pieces; returns
        the ``Outcome`` (route, ids, finish, timings; no text). ``ids``: the source positions
        (``len(ids)`` is the source length the cloud is told)."""
        lang = request.target if request.audio is None else request.language
        obs = self.observations(len(ids), lang, request.local_only, encode_ms)
        decision, decided_s = self.route(obs), self.clock()
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
        remote = decision.route in (Route.CLOUD, Route.HANDOFF)
        if remote and self.cloud is not None and not request.local_only:
            too_large = upload_refusal(self, hidden.shape[0])
            if too_large is not None:
                log.warning("upload refused", extra={"request_id": rid, "error": too_large})
                outcome.fallbacks.append("upload_too_large")
                self.metrics.fallback("upload_too_large")
                yield from self._local(hidden, params, outcome)
            elif self.breaker.allow(self.clock()):
                if decision.route is Route.HANDOFF and self._handoff_supported:
                    yield from self._handoff(rid, ids, hidden, params, decision, outcome, request)
                else:
                    # CLOUD, or HANDOFF to an older replica without Handoff: a CLOUD call with
                    # the decision's hedge. (A hedge at 0 would race the same way, but would
                    # teach the knowledge a late call on every request.)
                    yield from self._cloud(rid, ids, hidden, params, decision, outcome, request)
            else:
                outcome.fallbacks.append("breaker_open")
                yield from self._local(hidden, params, outcome)
        else:
            yield from self._local(hidden, params, outcome)
        return self.request_settled(outcome, decision, decided_s)

    def observations(
        self, src_len: int, target: str | None, local_only: bool, encode_ms: float = 0.0
    ) -> Observations:
        now = self.clock()
        breaker = self.breaker.state(now)
        with self._lock:
            return self.knowledge.observations(
                now,
                src_len,
                target or "",
                encode_ms,
                local_only=local_only,
                other_load=self.load.other_load(),  # psutil: other processes' CPU share
                has_cloud=self.cloud is not None,
                breaker_open=breaker is BreakerState.OPEN,
                breaker_probe=breaker is BreakerState.HALF_OPEN,
            )

    def route(self, obs: Observations) -> Decision:
        with self._lock:
            k = self.knowledge
            decision = decide(
                obs, self.device_profile, self.cloud_profile, self.policy, k.policy_state
            )
            forced = self.config.cloud.force_route
            if forced is not None and decision.reason not in RULED_LOCAL:
                decision = dataclasses.replace(
                    decision, route=Route(forced), reason=f"forced_{forced}"
                )
            k.decided(decision)
        return decision

    def _local(self, hidden, params: GenerationParams, outcome: Outcome) -> Iterator[Piece]:
        outcome.route = "local"
        t0 = self.clock()
        decode = LocalDecode(self.model, hidden, params, self.clock)
        yield from decode
        if decode.first_token_s is not None:
            outcome.first_token_ms = (decode.first_token_s - t0) * 1000
        outcome.ids, outcome.finish = decode.ids, decode.finish

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

    def _decode_request(self, rid, ids, hidden, params: GenerationParams):
        """The DecodeRequest both CLOUD and HANDOFF send: the encoder's output in our codec."""
        enc = codec_mod.encode(hidden, self.codec, self.compression)
        return wire.build_decode_request(
            request_id=rid,
            model_fingerprint=self.model.fingerprint,
            hidden_states=enc,
            source_length=len(ids),
            max_new_tokens=params.max_new_tokens,
            forced_first_token=params.forced_first_token,
        )

    def _cloud(self, rid, ids, hidden, params, decision, outcome, request) -> Iterator[Piece]:
        message = self._decode_request(rid, ids, hidden, params)
        call = self.cloud.call(message, self._deadline_s(decision, request))
        sent = SentCall(call, rid, self.clock())
        hedge_ms = decision.hedge_deadline_ms  # None: no hedge, only the first-token timeout
        wait_s = self.config.cloud.first_token_timeout_s if hedge_ms is None else hedge_ms / 1000
        race = Race(sent, params, self, self.metrics, wait_s, hedging=hedge_ms is not None,
                    decode_locally=self._decoder_of(hidden), clock=self.clock)  # fmt: skip
        _adopt(outcome, (yield from race.run()))

    def _handoff(self, rid, ids, hidden, params, decision, outcome, request) -> Iterator[Piece]:
        """HANDOFF: local decoding at once, the upload in parallel, the cloud continuing from
        the device's progress (``tandem.edge.race.HandoffRace``)."""
        build = lambda: self._decode_request(rid, ids, hidden, params)  # noqa: E731 (its thread's)
        call = self.cloud.handoff(build, self._deadline_s(decision, request))
        sent = SentCall(call, rid, self.clock())
        settings, hedge_ms = self.config.cloud, decision.hedge_deadline_ms
        ack_s = settings.first_token_timeout_s if hedge_ms is None else hedge_ms / 1000
        race = HandoffRace(sent, params, self, self.metrics, ack_timeout_s=ack_s,
                           stall_s=settings.handoff_stall_s,
                           decode_locally=self._decoder_of(hidden), clock=self.clock)  # fmt: skip
        _adopt(outcome, (yield from race.run()))

    def _decoder_of(self, hidden):
        """A race's local decoding of this request, from any ``params.prefix``."""
        return lambda params: LocalDecode(self.model, hidden, params, self.clock)


def _adopt(outcome: Outcome, result) -> None:
    """Copy a race's result (``tandem.edge.race.RaceResult``) into the request's outcome."""
    outcome.route, outcome.ids, outcome.finish = result.route, result.ids, result.finish
    outcome.fallbacks.extend(result.fallbacks)
    outcome.first_token_ms, outcome.upload_ms = result.first_token_ms, result.upload_ms
