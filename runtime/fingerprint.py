"""The fingerprint: one string that says which model produced a set of hidden states.

Hidden states are only meaningful to the decoder trained with that encoder. Hashing the encoder
file (its weights) together with the manifest (shapes, special tokens, languages) gives a value
that changes whenever anything a decoder relies on changes — the cloud refuses hidden states
whose fingerprint it does not serve, so a device never gets tokens from a mismatched decoder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def compute_fingerprint(encoder_path: Path, manifest_content: dict[str, Any]) -> str:
    """sha256 over the encoder file's bytes, then the canonical JSON of the manifest."""
    digest = hashlib.sha256()
    with open(encoder_path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    canonical = json.dumps(manifest_content, sort_keys=True, separators=(",", ":"))
    digest.update(canonical.encode("utf-8"))
    return "sha256:" + digest.hexdigest()
