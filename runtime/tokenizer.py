"""Text ↔ token ids through a Hugging Face ``tokenizers`` JSON file.

A thin wrapper on purpose: the tokenizer file carries its own normalizer, pre-tokenizer and
post-processor (which appends EOS, or a source-language token for NLLB), so the bundle — not
our code — decides how text becomes ids. We add what a service needs: a check that the file
agrees with the model, and clear errors for unusable text.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from tandem.errors import BundleError, InputError
from tandem.runtime.manifest import Manifest


class Tokenizer:
    """Encodes source text and decodes generated ids for one bundle."""

    def __init__(self, backend: HFTokenizer, manifest: Manifest) -> None:
        self._backend = backend
        self._special = {
            t for t in (manifest.tokens.pad, manifest.tokens.eos, manifest.tokens.decoder_start)
        } | set(manifest.languages.values())
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Source ids with the bundle's special tokens (EOS, source language) added."""
        if not isinstance(text, str):
            raise InputError(f"text must be str, got {type(text).__name__}")
        if not text.strip():
            raise InputError("text is empty")
        return self._backend.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, without special tokens (EOS, language token)."""
        return self._backend.decode([i for i in ids if i not in self._special])

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)


def load_tokenizer(path: Path, manifest: Manifest) -> Tokenizer:
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
        raise BundleError(f"tokenizer {path} cannot be loaded: {exc}") from exc
    size = backend.get_vocab_size(with_added_tokens=True)
    if manifest.tokenizer_vocab_size is not None and size != manifest.tokenizer_vocab_size:
        raise BundleError(
            f"tokenizer {path} has {size} tokens but the manifest expects "
            f"{manifest.tokenizer_vocab_size}: the tokenizer belongs to another model"
        )
    if size > manifest.dims.vocab_size:
        raise BundleError(
            f"tokenizer {path} has {size} tokens, more than the model's vocabulary "
            f"({manifest.dims.vocab_size}): the tokenizer belongs to another model"
        )
    for lang, token_id in manifest.languages.items():
        if backend.id_to_token(token_id) is None:
            raise BundleError(
                f"tokenizer {path} has no token with id {token_id} for language {lang!r}"
            )
    return Tokenizer(backend, manifest)
