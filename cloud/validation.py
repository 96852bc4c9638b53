"""Request validation: an untrusted ``DecodeRequest`` -> a ``Job`` the scheduler can run.

Everything a client controls is checked here, before the request takes a queue slot or any
model time, and every problem is one exception whose message names the wire field
(``params.max_new_tokens``, ``prefix[3]``, ``hidden_states.data``): ``InputError`` or
``CodecError`` (INVALID_ARGUMENT), ``FingerprintMismatch`` (FAILED_PRECONDITION). Any other
exception escaping ``validate_request`` is a bug — the property test in
``tests/cloud/test_properties.py`` holds the service to that.

Pure: no clocks, no I/O, no model calls; decoding the tensor is the only work proportional to
the request, and ``tandem.wire.decode_tensor`` bounds it by the model's limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from tandem.errors import FingerprintMismatch, InputError
from tandem.runtime import speech
from tandem.runtime.codec import Codec, Compression, payload_bytes
from tandem.runtime.decoding import GenerationParams
from tandem.runtime.manifest import Manifest
from tandem.v1 import decoder_pb2
from tandem.wire import check_request_id, decode_tensor

log = logging.getLogger(__name__)

ACCEPTED_CODECS = tuple(Codec)
ACCEPTED_COMPRESSIONS = tuple(Compression)


@dataclass(frozen=True)
class ServedModel:
    """What requests for one served bundle are checked against (and what ListModels says)."""

    name: str
    fingerprint: str
    manifest: Manifest
    max_new_tokens: int
    """Effective cap: the model's own limit, lowered by ``limits.max_new_tokens`` if set."""

    @classmethod
    def from_manifest(cls, manifest: Manifest, fingerprint: str, cap: int = 0) -> ServedModel:
        limit = manifest.dims.max_target_length - 1  # one slot is the decoder start token
        return cls(manifest.name, fingerprint, manifest, min(limit, cap) if cap else limit)

    @property
    def max_payload_bytes(self) -> int:
        """Largest decoded hidden-state payload a legal request carries (fp32, longest source)."""
        dims = self.manifest.dims
        return payload_bytes(dims.max_source_length, dims.hidden_size, Codec.FP32)

    def max_message_bytes(self) -> int:
        """Upper bound on the serialized size of a legal DecodeRequest for this model.

        The fp32 payload is the largest codec; zstd and gzip add at most a few bytes per block
        to incompressible data (well under 1 %); scales, a full prefix of 10-byte varints, the
        ids and framing fit in the fixed slack.
        """
        dims = self.manifest.dims
        payload = self.max_payload_bytes
        return (
            payload
            + payload // 100
            + dims.max_source_length * 4
            + dims.max_target_length * 11
            + 8192
        )


@dataclass(frozen=True)
class Job:
    """A validated request: what to decode, with which params, for whom."""

    request_id: str
    model: ServedModel
    hidden: np.ndarray = field(repr=False)  # (source_length, hidden) float32, padding dropped
    params: GenerationParams
    """What the decoder runs: ``max_new_tokens`` is an int, and a forced first token (or a speech
    model's forced prompt) is part of ``prefix`` (decoding after a forced token and after a one-token prefix are the same
    computation; this way ``max_new_tokens`` counts it as decoder.proto says)."""
    start: int = 0
    """Position of the first token to stream: len(DecodeRequest.prefix)."""
    lead: tuple[int, ...] = ()
    """Tokens streamed before any decoded one: the forced first token, or a speech model's
    whole window prompt, when the request had no prefix (the client has not seen it yet), else
    nothing."""
    codec_s: float = 0.0
    """Seconds decoding the hidden states took, when ``validate_request`` had a clock."""

    @property
    def complete(self) -> bool:
        """The prefix already fills max_new_tokens: the answer needs no decoding step."""
        return len(self.params.prefix) >= self.params.max_new_tokens


def find_model(
    fingerprint: str,
    served: Mapping[str, ServedModel],
    allowed: Collection[str] | None = None,
) -> ServedModel:
    """The served model with ``fingerprint``, or FingerprintMismatch listing what is served.

    ``allowed``: the fingerprints the caller may use (None: all). The listing names only
    those, so an error never tells a device about models its token does not open.
    """
    if not fingerprint:
        raise InputError("model_fingerprint is empty; set the fingerprint of the encoder's bundle")
    model = served.get(fingerprint)
    if model is None:
        visible = [m for m in served.values() if allowed is None or m.fingerprint in allowed]
        listing = ", ".join(f"{m.fingerprint} ({m.name})" for m in visible) or (
            "none this caller may use"
        )
        shown = fingerprint if len(fingerprint) <= 80 else fingerprint[:80] + "..."
        raise FingerprintMismatch(
            f"model_fingerprint {shown!r} is not served by this replica; served: {listing}"
        )
    return model


def validate_request(
    request: decoder_pb2.DecodeRequest,
    served: Mapping[str, ServedModel],
    clock: Callable[[], float] | None = None,
) -> Job:
    """Check every field of ``request``; the cheap checks run before the tensor is decoded.

    ``clock``: times the tensor's decoding into ``Job.codec_s`` (the caller's stage timer).
    """
    request_id = check_request_id(request.request_id)
    model = find_model(request.model_fingerprint, served)
    params = _params(request, model)
    if not request.HasField("hidden_states"):
        raise InputError("hidden_states is missing")
    dims = model.manifest.dims
    codec_start = clock() if clock is not None else 0.0
    hidden = decode_tensor(
        request.hidden_states,
        max_rows=dims.max_source_length,
        hidden_size=dims.hidden_size,
        max_bytes=model.max_payload_bytes,
        name="hidden_states",
    )  # (rows, hidden) float32, finite
    codec_s = clock() - codec_start if clock is not None else 0.0
    rows = hidden.shape[0]
    if not 1 <= request.source_length <= rows:
        raise InputError(
            f"source_length must be in [1, {rows}] (the rows of hidden_states), "
            f"got {request.source_length}"
        )
    hidden = np.ascontiguousarray(hidden[: request.source_length])  # (source_length, hidden)
    start = len(request.prefix)
    lead: tuple[int, ...] = ()
    if not params.prefix and params.forced_first_token is not None:
        lead = tuple(params.start_tokens())  # the forced token, or a speech model's prompt
        params = replace(params, prefix=lead)
    job = Job(request_id, model, hidden, params, start, lead, codec_s)
    if not job.complete:
        params.validate(model.manifest)  # the runtime's own rules, as a backstop
    return job


def _params(request: decoder_pb2.DecodeRequest, model: ServedModel) -> GenerationParams:
    manifest = model.manifest
    vocab = manifest.dims.vocab_size
    p = request.params
    max_new = p.max_new_tokens or model.max_new_tokens
    if max_new > model.max_new_tokens:
        raise InputError(
            f"params.max_new_tokens {p.max_new_tokens} exceeds this model's limit of "
            f"{model.max_new_tokens} (0 means the limit)"
        )
    if p.min_new_tokens > max_new:
        raise InputError(
            f"params.min_new_tokens {p.min_new_tokens} exceeds max_new_tokens {max_new}"
        )
    forced = None
    which = p.WhichOneof("first_token")
    if which == "forced_first_token":
        forced = _token(p.forced_first_token, "params.forced_first_token", vocab)
    elif which == "target_language":
        forced = manifest.language_token(p.target_language, "params.target_language")
    prompt = _speech_prompt(manifest, forced, which, max_new)
    eos = manifest.tokens.eos
    eos_given = None
    if p.HasField("eos_token_id"):
        eos = eos_given = _token(p.eos_token_id, "params.eos_token_id", vocab)
    prefix = _prefix(request.prefix, "prefix", max_new, eos, forced, vocab, prompt)
    return GenerationParams(
        max_new_tokens=max_new,
        min_new_tokens=p.min_new_tokens,
        forced_first_token=forced,
        eos_token_id=eos_given,
        prefix=prefix,
        forced_prompt=prompt,
    )


def _speech_prompt(
    manifest: Manifest, forced: int | None, which: str | None, max_new: int
) -> tuple[int, ...]:
    """A speech model's window prompt, derived from the request's forced first token.

    Whisper decodes every window after a forced prompt (language, task, no-timestamps); its
    first token names it (``speech.prompts``), so a DecodeRequest needs no field of its own
    and the cloud never trusts a prompt it did not build from its own manifest.
    """
    if manifest.speech is None:
        return ()
    known = speech.prompts(manifest)
    if not known:
        return ()
    where = f"params.{which or 'forced_first_token'}"
    if forced is None:
        firsts = ", ".join(str(t) for t in list(known)[:8]) + (", ..." if len(known) > 8 else "")
        raise InputError(
            f"params.forced_first_token is required by speech model {manifest.name!r}: the "
            f"first token of its window prompt ({firsts})"
        )
    prompt = known.get(forced)
    if prompt is None:
        raise InputError(
            f"{where}: token {forced} starts no window prompt of speech model "
            f"{manifest.name!r} (a language token, or {sorted(known)[:8]})"
        )
    if len(prompt) >= max_new:
        raise InputError(
            f"params.max_new_tokens {max_new} leaves no room after the {len(prompt)}-token "
            "window prompt"
        )
    return prompt


def validate_handoff_start(
    request: decoder_pb2.DecodeRequest,
    served: Mapping[str, ServedModel],
    clock: Callable[[], float] | None = None,
) -> Job:
    """The first message of a Handoff: a DecodeRequest as Decode checks it, without a prefix
    (the prefix travels in the call's second message, ``with_prefix``)."""
    if request.prefix:
        raise InputError(
            f"start.prefix has {len(request.prefix)} tokens; a Handoff's prefix travels in "
            "its prefix message, after the acknowledgement"
        )
    return validate_request(request, served, clock)


def with_prefix(job: Job, ids: Sequence[int], name: str = "prefix.ids") -> Job:
    """``job`` (validated without a prefix) continued after ``ids``, checked by the rules of
    ``DecodeRequest.prefix``; the tokens the device has are neither recomputed nor streamed."""
    params = job.params
    manifest = job.model.manifest
    eos = params.eos_token_id if params.eos_token_id is not None else manifest.tokens.eos
    prefix = _prefix(
        ids,
        name,
        params.max_new_tokens,
        eos,
        params.forced_first_token,
        manifest.dims.vocab_size,
        params.forced_prompt,
    )
    if not prefix:
        return job  # as Decode without a prefix: the forced first token (if any) is streamed
    job = replace(job, params=replace(params, prefix=prefix), start=len(prefix), lead=())
    if not job.complete:
        job.params.validate(manifest)
    return job


def _prefix(
    ids: Sequence[int],
    name: str,
    max_new: int,
    eos: int,
    forced: int | None,
    vocab: int,
    prompt: tuple[int, ...] = (),
) -> tuple[int, ...]:
    prefix = tuple(ids)
    if len(prefix) > max_new:
        raise InputError(f"{name} has {len(prefix)} tokens, more than max_new_tokens {max_new}")
    for i, token in enumerate(prefix):
        _token(token, f"{name}[{i}]", vocab)
        if token == eos:
            raise InputError(
                f"{name}[{i}] is the EOS token {eos}; a finished sequence cannot continue"
            )
    if prefix and forced is not None and prefix[0] != forced:
        raise InputError(
            f"{name}[0] = {prefix[0]} but the forced first token is {forced}; a resumed "
            "request must start with the token the first attempt was forced to"
        )
    if prefix and prefix[: len(prompt)] != prompt:
        raise InputError(
            f"{name} does not start with the window prompt {list(prompt)}; a resumed speech "
            "request continues after the whole prompt"
        )
    return prefix


def _token(token: int, name: str, vocab: int) -> int:
    if not 0 <= token < vocab:
        raise InputError(f"{name} = {token} is outside the vocabulary [0, {vocab})")
    return token
