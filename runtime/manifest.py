"""The model bundle manifest (``bundle.yaml``): what the parts are and how to drive them.

The manifest is the contract between the exporter and every runtime that loads a bundle — the
device and the cloud must agree on names, shapes and special tokens without looking inside the
ONNX graphs, so all of it is written down here and checked against the graphs on load.

Tensor names are fixed by the layout version, not stored per bundle: for ``L`` decoder layers,

* ``encoder``: ``input_ids`` (B, S) int64, ``attention_mask`` (B, S) int64
  → ``hidden_states`` (B, S, D) float32
* ``cache_init``: ``hidden_states`` (B, S, D) → ``cross_key_{i}``, ``cross_value_{i}``
  (B, H, S, Dh) for i < L — the cross-attention cache, computed once per request
  (whisper: ``input_features`` (B, n_mels, frames) float32 log-mel → ``hidden_states``)
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
ARCHITECTURES = ("marian", "m2m_100", "bart", "mbart", "t5", "whisper")
SPEECH_ARCHITECTURES = ("whisper",)
QUANTIZATIONS = ("none", "int8")
_LANG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_TASKS = ("transcribe", "translate")


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
class AudioFeatures:
    """The log-mel front end a speech model was trained with (Whisper's feature extractor).

    One window is ``n_samples`` samples at ``sampling_rate`` (zero-padded or cut), which gives
    ``n_frames`` frames of ``n_mels`` bins: the encoder's fixed input (B, n_mels, n_frames).
    """

    n_mels: int
    sampling_rate: int
    n_fft: int
    hop_length: int
    n_samples: int
    """Samples in one window: the chunk length in seconds × ``sampling_rate``."""
    n_frames: int
    """Frames in one window: ``n_samples // hop_length``, what the encoder takes."""

    @property
    def chunk_length_s(self) -> float:
        return self.n_samples / self.sampling_rate


@dataclass(frozen=True)
class SpeechPrompt:
    """Whisper's generation config: how the decoder prompt is built and what is suppressed.

    The prompt is ``start_of_transcript``, then the language token (``Manifest.languages``),
    the task token and ``no_timestamps`` — built as transformers' Whisper ``generate`` builds
    it, so our ids equal its ids (see ``tandem.runtime.speech``).
    """

    start_of_transcript: int
    """The decoder start token, ``<|startoftranscript|>``."""
    multilingual: bool
    """Whether language and task tokens exist; ``.en`` models have neither."""
    task_tokens: dict[str, int] = field(default_factory=dict)
    """``transcribe`` / ``translate`` → token id."""
    no_timestamps: int | None = None
    """``<|notimestamps|>``: we decode without timestamps, so it ends every prompt."""
    forced_decoder_ids: list[list[int | None]] = field(default_factory=list)
    """Legacy ``[position, token]`` pairs, used when neither language nor task is given."""
    begin_suppress_tokens: list[int] = field(default_factory=list)
    """Tokens never picked as the first generated token (after the prompt)."""
    max_length: int | None = None
    """The generation config's ``max_length`` (prompt included), as transformers uses it."""
    max_new_tokens: int | None = None
    """The generation config's ``max_new_tokens``, if it sets one."""


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
    audio: AudioFeatures | None = None
    """The audio front end; set exactly for speech architectures."""
    speech: SpeechPrompt | None = None
    """Whisper's prompt and suppression rules; set exactly for speech architectures."""
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
        for key in ("audio", "speech"):  # absent, not null, so text bundles hash as before
            if data[key] is None:
                del data[key]
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
    "audio", "speech", "fingerprint",
}  # fmt: skip
_SPEECH_KEYS = set(SpeechPrompt.__dataclass_fields__)


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
        values[name] = _int(f"{key}.{name}", value, minimum=1 if key in ("dims", "audio") else 0)
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
    audio, speech = _speech_sections(data, dims)
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
        audio=audio,
        speech=speech,
        fingerprint=fingerprint,
    )


def _token_list(where: str, value: Any, vocab: int) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BundleError(f"bundle.yaml: {where} must be a list of token ids")
    for i, token in enumerate(value):
        if _int(f"{where}[{i}]", token) >= vocab:
            raise BundleError(f"bundle.yaml: {where}[{i}] = {token} is outside the vocabulary")
    return list(value)


def _speech_sections(
    data: dict[str, Any], dims: Dims
) -> tuple[AudioFeatures | None, SpeechPrompt | None]:
    """``audio`` and ``speech``: required for speech architectures, refused for the others."""
    speech_arch = data["architecture"] in SPEECH_ARCHITECTURES
    for key in ("audio", "speech"):
        if speech_arch and key not in data:
            raise BundleError(f"bundle.yaml: architecture {data['architecture']!r} needs '{key}'")
        if not speech_arch and data.get(key) is not None:
            raise BundleError(f"bundle.yaml: '{key}' is only for speech architectures")
    if not speech_arch:
        return None, None
    audio = _section(data, "audio", AudioFeatures, optional=set())
    if audio.n_frames != audio.n_samples // audio.hop_length:
        raise BundleError(
            f"bundle.yaml: audio.n_frames ({audio.n_frames}) must be audio.n_samples // "
            f"audio.hop_length ({audio.n_samples // audio.hop_length})"
        )
    if audio.n_fft > audio.n_samples:
        raise BundleError("bundle.yaml: audio.n_fft must not exceed audio.n_samples")
    raw = data["speech"]
    if not isinstance(raw, dict):
        raise BundleError("bundle.yaml: 'speech' must be a mapping")
    unknown = sorted(set(raw) - _SPEECH_KEYS)
    if unknown:
        raise BundleError(f"bundle.yaml: unknown key(s) in 'speech': {unknown}")
    for key in ("start_of_transcript", "multilingual"):
        if key not in raw:
            raise BundleError(f"bundle.yaml: missing key(s) in 'speech': ['{key}']")
    vocab = dims.vocab_size

    def token(where: str, value: Any) -> int:
        if _int(f"speech.{where}", value) >= vocab:
            raise BundleError(f"bundle.yaml: speech.{where} = {value} is outside the vocabulary")
        return value

    sot = token("start_of_transcript", raw["start_of_transcript"])
    multilingual = raw["multilingual"]
    if not isinstance(multilingual, bool):
        raise BundleError(
            f"bundle.yaml: speech.multilingual must be true or false, got {multilingual!r}"
        )
    tasks = raw.get("task_tokens") or {}
    if not isinstance(tasks, dict) or any(t not in _TASKS for t in tasks):
        raise BundleError(f"bundle.yaml: speech.task_tokens must map {list(_TASKS)} to token ids")
    tasks = {name: token(f"task_tokens.{name}", value) for name, value in tasks.items()}
    no_ts = raw.get("no_timestamps")
    no_ts = None if no_ts is None else token("no_timestamps", no_ts)
    forced = raw.get("forced_decoder_ids") or []
    if not isinstance(forced, list):
        raise BundleError("bundle.yaml: speech.forced_decoder_ids must be a list of [position, id]")
    for i, pair in enumerate(forced):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise BundleError(f"bundle.yaml: speech.forced_decoder_ids[{i}] must be [position, id]")
        _int(f"speech.forced_decoder_ids[{i}][0]", pair[0], minimum=1)
        if pair[1] is not None:
            token(f"forced_decoder_ids[{i}][1]", pair[1])
    begin = _token_list("speech.begin_suppress_tokens", raw.get("begin_suppress_tokens"), vocab)
    limits = {}
    for key in ("max_length", "max_new_tokens"):
        value = raw.get(key)
        limits[key] = None if value is None else _int(f"speech.{key}", value, minimum=1)
    if data.get("tokens", {}).get("decoder_start") != sot:
        raise BundleError("bundle.yaml: speech.start_of_transcript must equal tokens.decoder_start")
    speech = SpeechPrompt(
        start_of_transcript=sot,
        multilingual=multilingual,
        task_tokens=tasks,
        no_timestamps=no_ts,
        forced_decoder_ids=[list(p) for p in forced],
        begin_suppress_tokens=begin,
        **limits,
    )
    return audio, speech


def part_io(manifest: Manifest) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """Expected (inputs, outputs) of each part as name → rank, for validation on load."""
    layers = manifest.dims.decoder_layers
    cross = {f"cross_{kv}_{i}": 4 for i in range(layers) for kv in ("key", "value")}
    past = {f"past_{kv}_{i}": 4 for i in range(layers) for kv in ("key", "value")}
    present = {f"present_{kv}_{i}": 4 for i in range(layers) for kv in ("key", "value")}
    encoder_in = (
        {"input_features": 3}
        if manifest.architecture in SPEECH_ARCHITECTURES
        else {"input_ids": 2, "attention_mask": 2}
    )
    return {
        "encoder": (encoder_in, {"hidden_states": 3}),
        "cache_init": ({"hidden_states": 3}, cross),
        "decoder": (
            {"input_ids": 2, "position_ids": 2, "self_mask": 2, "encoder_mask": 2, **past, **cross},
            {"logits": 2, **present},
        ),
    }
