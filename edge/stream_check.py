"""StreamCheck: every message of a cloud Decode (or Handoff) stream checked against the bundle and the request.

The edge trusts nothing that crosses the network (STYLE.md), the cloud's token stream
included. A broken, malicious or mismatched replica could stream ids outside the vocabulary
(which crash detokenizing), EOS inside the stream, more tokens than were asked for, or a final
event that contradicts what came before. Each is a fault of that replica: ``CloudViolation``
names the reason and carries the *valid prefix* — the tokens before the first bad one — so the
agent resumes locally from it like from any broken stream, and the app still gets the answer
an all-local decode gives.

What it cannot see: a wrong token that is a valid, non-EOS id in its place. Only decoding again
could tell, which would defeat the cloud; the integrity of an authenticated replica (TLS,
tokens) is what protects against that (SECURITY.md).

Pure: no I/O, no clock; the cloud client feeds it each message as it arrives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tandem.errors import CloudViolation
from tandem.v1 import decoder_pb2

_ENDED = frozenset(
    {
        decoder_pb2.FINISH_REASON_EOS,
        decoder_pb2.FINISH_REASON_LENGTH,
        decoder_pb2.FINISH_REASON_CANCELLED,
        decoder_pb2.FINISH_REASON_DEADLINE,
    }
)


@dataclass(frozen=True)
class StreamLimits:
    """What the edge's own model bundle says a token stream may contain."""

    vocab_size: int
    eos_token_id: int
    max_new_tokens: int
    """The bundle's limit, used when a request leaves ``max_new_tokens`` at 0."""
    prompts: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    """A speech model's window prompts by first token (``speech.prompts``): a stream forced to
    start with that token must start with the whole prompt."""

    @classmethod
    def from_manifest(cls, manifest) -> StreamLimits:
        from tandem.runtime.speech import prompts

        return cls(
            vocab_size=manifest.dims.vocab_size,
            eos_token_id=manifest.tokens.eos,
            max_new_tokens=manifest.dims.max_target_length - 1,
            prompts=prompts(manifest) if manifest.speech is not None else {},
        )


class StreamCheck:
    """The contract of one Decode call (decoder.proto ``TokenChunk``/``DecodeFinal``)."""

    def __init__(
        self,
        request: decoder_pb2.DecodeRequest,
        limits: StreamLimits | None,
        replica: str = "",
        prefix: Sequence[int] | None = None,
    ) -> None:
        """``prefix``: the tokens the stream continues from, when not ``request.prefix`` (a
        Handoff sends its prefix after the request)."""
        params = request.params
        prefix = request.prefix if prefix is None else prefix
        self._prefix_len = len(prefix)
        self._vocab = limits.vocab_size if limits is not None else None
        eos = limits.eos_token_id if limits is not None else None
        self._eos = params.eos_token_id if params.HasField("eos_token_id") else eos
        self._max = params.max_new_tokens or (limits.max_new_tokens if limits else None)
        self._min = params.min_new_tokens
        self._forced = (
            params.forced_first_token
            if params.WhichOneof("first_token") == "forced_first_token" and not prefix
            else None
        )
        self._prompt = (
            limits.prompts.get(self._forced, ()) if limits and self._forced is not None else ()
        )
        self.replica = replica
        self.tokens: list[int] = []
        """The valid tokens so far (after the prefix sent)."""

    def _violation(self, reason: str, detail: str) -> CloudViolation:
        where = f" from {self.replica}" if self.replica else ""
        # A valid prefix ends after the whole forced prompt, or is empty: a local resume from
        # part of a prompt would decode from the wrong context.
        valid = self.tokens if len(self.tokens) >= len(self._prompt) else []
        return CloudViolation(
            f"cloud stream{where} broke the contract ({reason}: {detail}) after "
            f"{len(valid)} valid tokens",
            valid,
            reason=reason,
            replica=self.replica,
        )

    def chunk(self, start: int, ids: list[int]) -> list[int]:
        """Accept one TokenChunk; returns its ids, or raises CloudViolation (valid prefix kept,
        the good ids of this chunk before the bad one included)."""
        expected = self._prefix_len + len(self.tokens)
        if start != expected:
            raise self._violation("chunk_start", f"chunk starts at {start}, expected {expected}")
        if not ids:
            raise self._violation("empty_chunk", "a token chunk without tokens")
        for token in ids:
            position = self._prefix_len + len(self.tokens)
            if self._max is not None and position >= self._max:
                raise self._violation(
                    "too_many_tokens", f"more than max_new_tokens={self._max} tokens"
                )
            if token < 0 or (self._vocab is not None and token >= self._vocab):
                bound = self._vocab if self._vocab is not None else "?"
                raise self._violation("token_out_of_vocab", f"id {token} not in [0, {bound})")
            if token == self._eos:
                raise self._violation("eos_in_stream", f"EOS id {token} at position {position}")
            if position == 0 and self._forced is not None and token != self._forced:
                raise self._violation(
                    "forced_first_token", f"first token {token}, requested {self._forced}"
                )
            if position < len(self._prompt) and token != self._prompt[position]:
                raise self._violation(
                    "forced_prompt", f"token {token} at {position}, the prompt has {self._prompt}"
                )
            self.tokens.append(token)
        return ids

    def final(self, final: decoder_pb2.DecodeFinal) -> None:
        """Accept the DecodeFinal, or raise CloudViolation (every token so far kept)."""
        count = self._prefix_len + len(self.tokens)
        if final.reason not in _ENDED:
            raise self._violation("final_reason", f"finish reason {final.reason}")
        if final.token_count != count:
            raise self._violation(
                "final_token_count", f"final says {final.token_count} tokens, stream had {count}"
            )
        if final.reason == decoder_pb2.FINISH_REASON_LENGTH and count != (self._max or count):
            raise self._violation("final_length", f"LENGTH after {count} of {self._max} tokens")
        if final.reason == decoder_pb2.FINISH_REASON_EOS and (
            count < self._min or (self._max is not None and count >= self._max)
        ):
            raise self._violation("final_eos", f"EOS after {count} tokens")


__all__ = ["StreamCheck", "StreamLimits"]
