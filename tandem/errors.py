"""The one small error tree of Tandem.

Every failure a user can cause or meet is one of these, so callers catch ``TandemError`` and
know they have seen everything; anything else escaping is a bug::

    TandemError
    ├── ConfigError            a YAML config or CLI flag is invalid
    ├── BundleError            a model bundle is missing, malformed or inconsistent
    │   └── FingerprintMismatch  hidden states come from another model bundle
    ├── InputError             a request is unusable (empty, too long, unknown language, ...)
    ├── CodecError             hidden-state bytes do not decode to a valid tensor
    ├── Overloaded             the service is at capacity; retry later
    ├── Unauthenticated        a call carries no credentials, or unknown ones
    ├── PermissionDenied       a known caller asked for what it may not use
    └── CloudError             the cloud decoder could not answer
        ├── CloudUnavailable   it cannot be reached (offline, refused, deadline before any token)
        │   └── CloudDeadline  no token before the call's deadline (a stalled link, or cloud)
        └── StreamBroken       the token stream ended early; tokens so far are kept
            └── CloudViolation the cloud broke the stream contract; the valid prefix is kept

Only ``tandem.rpc.STATUS_CODES`` maps these to gRPC status codes (both services answer through
it), and only the edge cloud client maps gRPC errors back to them.
"""

from __future__ import annotations


class TandemError(Exception):
    """Base of every error Tandem raises on purpose."""


class ConfigError(TandemError):
    """A configuration file or option is invalid; the message names the key and the value."""


class BundleError(TandemError):
    """A model bundle cannot be used; the message names the file and what is wrong with it."""


class FingerprintMismatch(BundleError):
    """Hidden states were produced by a bundle with another fingerprint."""


class InputError(TandemError):
    """A request's content is unusable (empty text, too many tokens, unknown language, ...)."""


class CodecError(TandemError):
    """Serialized hidden states are malformed (dtype, shape, bytes, scales, compression)."""


class Overloaded(TandemError):
    """The service has no room for the request now; ``retry_after_s`` says when to retry."""

    def __init__(self, message: str, retry_after_s: float = 0.1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(TandemError):
    """The call carries no credentials, or credentials this replica does not know."""


class PermissionDenied(TandemError):
    """The caller is known but may not use what it asked for (a model outside its list)."""


class CloudError(TandemError):
    """The cloud decoder did not produce a complete answer."""


class CloudUnavailable(CloudError):
    """The cloud could not be reached or gave no token before its deadline."""


class CloudDeadline(CloudUnavailable):
    """The call's deadline passed before any token. Unlike a refused connection this says
    something about the link: the upload may be stalled, so the agent counts it as a (censored)
    throughput sample, as it does when its own first-token timeout fires first."""


class StreamBroken(CloudError):
    """The token stream ended early; ``tokens`` holds what arrived before the break."""

    def __init__(self, message: str, tokens: list[int] | None = None) -> None:
        super().__init__(message)
        self.tokens = list(tokens or [])


class CloudViolation(StreamBroken):
    """The cloud sent what the contract forbids (a token outside the vocabulary, EOS inside the
    stream, more than ``max_new_tokens``, a final event that contradicts the tokens).

    A fault of that replica, never of the app: ``tokens`` holds the valid prefix before the
    violation, so the agent resumes locally from it like from any broken stream; ``reason``
    is a short snake_case code for metrics and logs, ``replica`` who sent it (if known).
    """

    def __init__(
        self, message: str, tokens: list[int] | None = None, reason: str = "", replica: str = ""
    ) -> None:
        super().__init__(message, tokens)
        self.reason = reason
        self.replica = replica
