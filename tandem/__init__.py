"""Tandem: hybrid edge-cloud inference of encoder-decoder transformers.

The public API is re-exported here; see README.md for the architecture.
"""

from __future__ import annotations

from tandem.errors import (
    BundleError,
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

__all__ = [
    "BundleError",
    "CloudError",
    "CloudUnavailable",
    "CodecError",
    "ConfigError",
    "FingerprintMismatch",
    "InputError",
    "Overloaded",
    "StreamBroken",
    "TandemError",
    "__version__",
]
