"""Tandem: hybrid edge-cloud inference of encoder-decoder transformers.

The public API is re-exported here; see docs/index.md for the architecture.
"""

from __future__ import annotations

from tandem.errors import (
    BundleError,
    CloudDeadline,
    CloudError,
    CloudUnavailable,
    CodecError,
    ConfigError,
    FingerprintMismatch,
    InputError,
    Overloaded,
    StreamBroken,
    TandemError,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: ``import tandem`` stays cheap (no grpc, no onnxruntime) for tools that only need
    # the errors; the heavy parts load on first use.
    if name == "EdgeClient":
        from tandem.edge.client import EdgeClient

        return EdgeClient
    if name == "Seq2Seq":
        from tandem.runtime.seq2seq import Seq2Seq

        return Seq2Seq
    raise AttributeError(f"module 'tandem' has no attribute {name!r}")


__all__ = [
    "BundleError",
    "CloudDeadline",
    "CloudError",
    "CloudUnavailable",
    "CodecError",
    "EdgeClient",
    "ConfigError",
    "FingerprintMismatch",
    "InputError",
    "Overloaded",
    "Seq2Seq",
    "StreamBroken",
    "TandemError",
    "__version__",
]
