"""The model bundle manifest (``bundle.yaml``): what the parts are and how to drive them.

The manifest is the contract between the exporter and every runtime that loads a bundle — the
device and the cloud must agree on names, shapes and special tokens without looking inside the
ONNX graphs, so all of it is written down here and checked against the graphs on load.

Tensor names are fixed by the layout version, not stored per bundle: for ``L`` decoder layers,

* ``encoder``: ``input_ids`` (B, S) int64, ``attention_mask`` (B, S) int64
  → ``hidden_states`` (B, S, D) float32
* ``cache_init``: ``hidden_states`` (B, S, D) → ``cross_key_{i}``, ``cross_value_{i}``
  (B, H, S, Dh) for i < L — the cross-attention cache, computed once per request
* ``decoder``: ``input_ids`` (B, T), ``position_ids`` (B, T), ``self_mask`` (B, P) over the
  past, ``encoder_mask`` (B, S), ``past_key_{i}``/``past_value_{i}`` (B, H, P, Dh),
  ``cross_key_{i}``/``cross_value_{i}`` → ``logits`` (B, V) for the last input position,
  ``present_key_{i}``/``present_value_{i}`` (B, H, P+T, Dh). T > 1 prefills a prefix in one run.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from tandem.errors import BundleError, InputError

FORMAT = "tandem-bundle/1"
PART_NAMES = ("encoder", "cache_init", "decoder")
ARCHITECTURES = ("marian", "m2m_100", "bart", "mbart", "t5")
QUANTIZATIONS = ("none", "int8")
_LANG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Dims:
    """Sizes of the model; every tensor shape in the bundle follows from them."""

    hidden_size: int
    num_heads: int
    head_dim: int
    encoder_layers: int
    decoder_layers: int
    vocab_size: int
    max_source_length: int
    """Longest source in tokens (position table size, or a chosen limit for relative positions)."""
    max_target_length: int
    """Longest decoder sequence in tokens, decoder start token included."""


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    eos: int
    decoder_start: int
    unk: int | None = None


@dataclass(frozen=True)
class Manifest:
    """The parsed, validated ``bundle.yaml``."""

    name: str
    architecture: str
    dims: Dims
    tokens: SpecialTokens
    parts: dict[str, str]
    """Part name → ONNX file name inside the bundle directory."""
    opset: int
    quantization: str = "none"
    tokenizer: str | None = None
    """File name of the Hugging Face ``tokenizers`` JSON, or None (ids-only bundle)."""
    tokenizer_vocab_size: int | None = None
    languages: dict[str, int] = field(default_factory=dict)
    """Target language → token forced as the first generated token (NLLB's ``tgt_lang``)."""
    default_forced_first_token: int | None = None
    suppress_tokens: tuple[int, ...] = ()
    """Tokens greedy decoding never picks (e.g. the pad token Marian models must not emit)."""
    forced_last_token: int | None = None
    """Token forced when ``max_new_tokens`` is reached (Hugging Face's ``forced_eos_token_id``)."""
    input_pattern: str | None = None
    """Regex of inputs the model was trained on; outside it the CLI warns (not an error)."""
    input_description: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (exporter version, original checkpoint); not interpreted."""
    fingerprint: str | None = None

    def language_token(self, target: str, field: str | None = None) -> int:
        """The token forced first for ``target``; an unknown language is the caller's
        ``InputError``, naming ``field`` (the request field it came from) where given.

        The one check of a target language, for the runtime, the edge's API and the cloud's
        request validation alike."""
        token = self.languages.get(target)
        if token is None:
            known = ", ".join(sorted(self.languages)) or "none (the model is not multilingual)"
            where = f"{field}: " if field else ""
            raise InputError(
                f"{where}unknown target language {target[:40]!r}; this model knows: {known}"
            )
        return token

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT, **asdict(self)}
        data["suppress_tokens"] = list(self.suppress_tokens)
        return data

    def hashed_dict(self) -> dict[str, Any]:
        """The manifest content covered by the fingerprint (everything but the fingerprint)."""
        data = self.to_dict()
        data.pop("fingerprint", None)
        data.pop("source", None)
        return data


_TOP_KEYS = {
    "format", "name", "architecture", "dims", "tokens", "parts", "opset", "quantization",
    "tokenizer", "tokenizer_vocab_size", "languages", "default_forced_first_token",
    "suppress_tokens", "forced_last_token", "input_pattern", "input_description", "source",
    "fingerprint",
}  # fmt: skip


def _int(where: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"bundle.yaml: {where} must be an integer, got {value!r}")
    if value < minimum:
        raise BundleError(f"bundle.yaml: {where} must be >= {minimum}, got {value}")
    return value


def _section(data: dict[str, Any], key: str, cls: type, optional: set[str]) -> Any:
    raw = data.get(key)
    if not isinstance(raw, dict):
        raise BundleError(f"bundle.yaml: '{key}' must be a mapping, got {type(raw).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise BundleError(f"bundle.yaml: unknown key(s) in '{key}': {unknown}")
    missing = sorted(known - set(raw) - optional)
    if missing:
        raise BundleError(f"bundle.yaml: missing key(s) in '{key}': {missing}")
    values = {}
    for name, value in raw.items():
        if value is None and name in optional:
            values[name] = None
            continue
        values[name] = _int(f"{key}.{name}", value, minimum=1 if key == "dims" else 0)
    return cls(**values)


def parse_manifest(data: Any) -> Manifest:
    """Validate a loaded ``bundle.yaml`` mapping; one precise BundleError per problem."""
    if not isinstance(data, dict):
        raise BundleError("bundle.yaml: top level must be a mapping")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise BundleError(f"bundle.yaml: unknown key(s) {unknown}")
    if data.get("format") != FORMAT:
        raise BundleError(
            f"bundle.yaml: format must be {FORMAT!r}, got {data.get('format')!r} "
            "(re-export the bundle with this version of tandem)"
        )
    for key in ("name", "architecture", "dims", "tokens", "parts", "opset"):
        if key not in data:
            raise BundleError(f"bundle.yaml: missing key '{key}'")
    if data["architecture"] not in ARCHITECTURES:
        raise BundleError(
            f"bundle.yaml: architecture must be one of {list(ARCHITECTURES)}, "
            f"got {data['architecture']!r}"
        )
    dims = _section(data, "dims", Dims, optional=set())
    if dims.num_heads * dims.head_dim != dims.hidden_size and data["architecture"] != "t5":
        raise BundleError(
            f"bundle.yaml: dims.num_heads ({dims.num_heads}) × dims.head_dim ({dims.head_dim}) "
            f"must equal dims.hidden_size ({dims.hidden_size})"
        )
    tokens = _section(data, "tokens", SpecialTokens, optional={"unk"})
    for name in ("pad", "eos", "decoder_start", "unk"):
        token = getattr(tokens, name)
        if token is not None and token >= dims.vocab_size:
            raise BundleError(
                f"bundle.yaml: tokens.{name} = {token} is outside the vocabulary "
                f"(vocab_size {dims.vocab_size})"
            )
    parts = data["parts"]
    if not isinstance(parts, dict):
        raise BundleError("bundle.yaml: 'parts' must map part names to ONNX file names")
    missing = [p for p in PART_NAMES if p not in parts]
    extra = sorted(set(parts) - set(PART_NAMES))
    if missing:
        raise BundleError(f"bundle.yaml: parts is missing {missing} (needs {list(PART_NAMES)})")
    if extra:
        raise BundleError(f"bundle.yaml: parts has unknown part(s) {extra}")
    for part, file in parts.items():
        if not isinstance(file, str) or "/" in file or "\\" in file or file.startswith("."):
            raise BundleError(f"bundle.yaml: parts.{part} must be a plain file name, got {file!r}")
    opset = _int("opset", data["opset"], minimum=1)
    quantization = data.get("quantization", "none")
    if quantization not in QUANTIZATIONS:
        raise BundleError(f"bundle.yaml: quantization must be one of {list(QUANTIZATIONS)}")
    languages = data.get("languages") or {}
    if not isinstance(languages, dict):
        raise BundleError("bundle.yaml: languages must map language codes to token ids")
    for lang, token in languages.items():
        if not isinstance(lang, str) or not _LANG_RE.match(lang):
            raise BundleError(f"bundle.yaml: languages has an invalid code {lang!r}")
        if _int(f"languages.{lang}", token) >= dims.vocab_size:
            raise BundleError(f"bundle.yaml: languages.{lang} = {token} is outside the vocabulary")
    forced = data.get("default_forced_first_token")
    if forced is not None and _int("default_forced_first_token", forced) >= dims.vocab_size:
        raise BundleError("bundle.yaml: default_forced_first_token is outside the vocabulary")
    suppress = data.get("suppress_tokens") or []
    if not isinstance(suppress, list):
        raise BundleError("bundle.yaml: suppress_tokens must be a list of token ids")
    for i, token in enumerate(suppress):
        if _int(f"suppress_tokens[{i}]", token) >= dims.vocab_size:
            raise BundleError(f"bundle.yaml: suppress_tokens[{i}] is outside the vocabulary")
    forced_last = data.get("forced_last_token")
    if forced_last is not None and _int("forced_last_token", forced_last) >= dims.vocab_size:
        raise BundleError("bundle.yaml: forced_last_token is outside the vocabulary")
    tokenizer = data.get("tokenizer")
    if tokenizer is not None and (not isinstance(tokenizer, str) or "/" in tokenizer):
        raise BundleError(f"bundle.yaml: tokenizer must be a plain file name, got {tokenizer!r}")
    tok_vocab = data.get("tokenizer_vocab_size")
    if tok_vocab is not None:
        _int("tokenizer_vocab_size", tok_vocab, minimum=1)
    input_pattern = data.get("input_pattern")
    if input_pattern is not None:
        try:
            re.compile(input_pattern)
        except (re.error, TypeError) as exc:
            raise BundleError(f"bundle.yaml: input_pattern is not a valid regex: {exc}") from exc
    input_description = data.get("input_description")
    source = data.get("source") or {}
    if not isinstance(source, dict):
        raise BundleError("bundle.yaml: source must be a mapping")
    fingerprint = data.get("fingerprint")
    if fingerprint is not None and not (
        isinstance(fingerprint, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", fingerprint)
    ):
        raise BundleError(
            f"bundle.yaml: fingerprint must be 'sha256:<64 hex>', got {fingerprint!r}"
        )
    return Manifest(
        name=str(data["name"]),
        architecture=data["architecture"],
        dims=dims,
        tokens=tokens,
        parts=dict(parts),
        opset=opset,
        quantization=quantization,
        tokenizer=tokenizer,
        tokenizer_vocab_size=tok_vocab,
        languages=dict(languages),
        default_forced_first_token=forced,
        suppress_tokens=tuple(suppress),
        forced_last_token=forced_last,
        input_pattern=input_pattern,
        input_description=input_description,
        source=dict(source),
        fingerprint=fingerprint,
    )


def part_io(manifest: Manifest) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """Expected (inputs, outputs) of each part as name → rank, for validation on load."""
    layers = manifest.dims.decoder_layers
    cross = {f"cross_{kv}_{i}": 4 for i in range(layers) for kv in ("key", "value")}
    past = {f"past_{kv}_{i}": 4 for i in range(layers) for kv in ("key", "value")}
    present = {f"present_{kv}_{i}": 4 for i in range(layers) for kv in ("key", "value")}
    return {
        "encoder": ({"input_ids": 2, "attention_mask": 2}, {"hidden_states": 3}),
        "cache_init": ({"hidden_states": 3}, cross),
        "decoder": (
            {"input_ids": 2, "position_ids": 2, "self_mask": 2, "encoder_mask": 2, **past, **cross},
            {"logits": 2, **present},
        ),
    }
