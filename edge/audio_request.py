"""Audio requests on the edge agent: WAV → log-mel windows → encoder → observe → decide → route.

A speech model's input takes the path a text takes, once per decoding run: the agent reads
the WAV (every way it can be unusable is a one-line ``InputError``, checked before any model
time), and ``Seq2Seq.transcription`` walks the windows — consecutive, at fixed boundaries, as
``tandem transcribe`` does — calling back here to encode each one on the device and to decode
it on the route the policy picks for it (``Agent.decode_routed``: local, cloud or handoff,
with every fallback of a text request). Because all routes run through that one loop, a cloud
or failed-over transcript has the ids of a local one.

Each run's kept ids stream as one piece when the run ends, not token by token: Whisper's
segment rule (``speech.split_segments``) may drop a run's last tokens, and the local API never
retracts a piece. The policy sees the real payload: the encoder's output rows (frames / 2 of a
window) as the source length, and the bundle's hidden size (``priced_profile``).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from tandem.edge.local_decode import Piece
from tandem.errors import InputError
from tandem.policy import Profile
from tandem.runtime import codec as codec_mod
from tandem.runtime.decoding import GenerationParams
from tandem.runtime.seq2seq import Generation
from tandem.runtime.wav import parse_wav
from tandem.wire import MAX_REQUEST_ID_CHARS

if TYPE_CHECKING:
    from tandem.edge.agent import Agent, Outcome, Request

log = logging.getLogger(__name__)

MESSAGE_SLACK_BYTES = 1024
"""A DecodeRequest's bytes besides the tensor's data and scales: ids, fingerprint, params,
framing (about 200 bytes; a prefix of a few hundred varints at most)."""


def priced_profile(profile: Profile, hidden_size: int) -> Profile:
    """``profile`` with the bundle's hidden size: the policy prices an upload as rows ×
    hidden × codec bytes, and a profile measured on another model (the shipped one is the
    default text model's) would price a Whisper window at that model's width."""
    if profile.hidden_size == hidden_size:
        return profile
    log.warning(
        "profile hidden size differs from the bundle's; using the bundle's",
        extra={"profile": profile.hidden_size, "bundle": hidden_size},
    )
    return dataclasses.replace(profile, hidden_size=hidden_size)


def upload_refusal(agent: Agent, rows: int) -> str | None:
    """Why hidden states of ``rows`` rows cannot be uploaded, or None when they fit.

    The bound is the uncompressed size (compression only shrinks it), against
    ``cloud.max_message_bytes``; the message names the limit and the codecs that would fit.
    """
    limit = agent.config.cloud.max_message_bytes
    hidden = agent.model.manifest.dims.hidden_size

    def size(codec: codec_mod.Codec) -> int:
        return codec_mod.payload_bytes(rows, hidden, codec) + MESSAGE_SLACK_BYTES

    need = size(agent.codec)
    if need <= limit:
        return None
    fits = [f"{c.value} ({size(c)} bytes)" for c in codec_mod.Codec if size(c) <= limit]
    hint = f"; {', '.join(fits)} would fit" if fits else "; no codec fits"
    return (
        f"hidden states {rows} x {hidden} in {agent.codec.value} need up to {need} bytes, over "
        f"cloud.max_message_bytes {limit}{hint}"
    )


def _drain(generator):
    """Run a generator to its end, dropping what it yields; its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as done:
            return done.value


def _one(values: list[str]) -> str:
    return values[0] if len(set(values)) == 1 else "mixed"


def transcribe_request(agent: Agent, request: Request) -> Iterator[Piece | Outcome]:
    """Stream the transcript of ``request.audio`` run by run; the last item is its ``Outcome``."""
    from tandem.edge.agent import Outcome

    start = agent.clock()
    rid = request.request_id or f"edge-{uuid.uuid4().hex[:12]}"
    model, config = agent.model, agent.config
    if not model.is_speech:
        raise InputError(f"audio: bundle {model.manifest.name!r} is a text model; send text")
    if not request.audio:
        raise InputError("audio.wav: must not be empty")
    if len(request.audio) > config.max_audio_bytes:
        raise InputError(
            f"audio.wav has {len(request.audio)} bytes; the limit is {config.max_audio_bytes} "
            "(max_audio_bytes)"
        )
    audio = parse_wav(request.audio, config.max_audio_s, name="audio.wav")
    eos = model.manifest.tokens.eos
    runs: list[Outcome] = []
    encode_ms = [0.0]

    def encode(features: np.ndarray) -> np.ndarray:
        t0 = agent.clock()
        hidden = model.encode_features(features)  # (frames / 2, D) float32
        encode_ms[0] = (agent.clock() - t0) * 1000
        return hidden

    def decode(hidden: np.ndarray, params: GenerationParams) -> Generation:
        # Every run is a request of its own to the cloud: an id of its own, the same stem.
        run_id = f"{rid[: MAX_REQUEST_ID_CHARS - 8]}/{len(runs)}"
        positions = range(hidden.shape[0])  # the source length the cloud is told
        this = request
        if request.deadline_s is not None:  # every cloud call is bounded by what is left
            left = request.deadline_s - (agent.clock() - start)
            this = dataclasses.replace(request, deadline_s=max(left, 0.05))
        routed = agent.decode_routed(run_id, positions, hidden, params, this, encode_ms[0])
        outcome = _drain(routed)
        runs.append(outcome)
        agent.request_done(request.language, hidden.shape[0], outcome.ids, outcome.finish)
        ids = outcome.ids + ([eos] if outcome.finish == "eos" else [])
        return Generation(ids=ids, text=None, finish=outcome.finish)

    first_token_ms = 0.0
    offset = 0
    with agent._slots:
        transcription = model.transcription(
            audio, request.language, request.max_new_tokens, encode=encode, decode=decode
        )
        while True:
            try:
                kept = next(transcription)
            except StopIteration as done:
                result = done.value
                break
            if kept:
                if not first_token_ms:
                    first_token_ms = (agent.clock() - start) * 1000
                yield Piece(offset, list(kept))
                offset += len(kept)
    outcome = Outcome(
        request_id=rid,
        route=_one([r.route for r in runs]),
        reason=_one([r.reason for r in runs]),
        decision=_one([r.decision for r in runs]),
        fallbacks=[f for r in runs for f in r.fallbacks],
        ids=list(result.ids),
        text=result.text or "",
        finish=result.finish,
        encode_ms=sum(r.encode_ms for r in runs),
        upload_ms=sum(r.upload_ms for r in runs),
        first_token_ms=first_token_ms,
        total_ms=(agent.clock() - start) * 1000,
    )
    agent.finished(outcome)
    yield outcome
