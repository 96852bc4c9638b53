"""Exporter: a local Hugging Face seq2seq checkpoint → a Tandem model bundle.

Splits the model the way RTranslator splits NLLB — encoder, cross-attention cache initializer,
decoder with past key/values — writes the manifest, copies the fast tokenizer if the checkpoint
has one, and fingerprints the result. Needs the ``export`` extra (torch, transformers); nothing
here is imported at run time.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import yaml

from tandem.errors import BundleError, ConfigError
from tandem.runtime.bundle import MANIFEST_FILE, load_bundle
from tandem.runtime.fingerprint import compute_fingerprint
from tandem.runtime.manifest import AudioFeatures, Dims, Manifest, SpecialTokens, SpeechPrompt
from tandem.runtime.quantize import quantize_bundle_parts

log = logging.getLogger(__name__)

OPSET = 17
T5_MAX_LENGTH = 512  # relative positions have no table; this bounds memory per request
_M2M_LANG = re.compile(r"^__([a-z]{2,3}(?:_[A-Za-z]+)?)__$")
_TOKENIZER_FILES = (
    "tokenizer_config.json", "spiece.model", "source.spm", "sentencepiece.bpe.model",
    "vocab.json", "tokenizer.model",
)  # fmt: skip
_NLLB_LANG = re.compile(r"^([a-z]{3}_[A-Z][a-z]{3})$")
_WHISPER_LANG = re.compile(r"^<\|([a-z]{2,3})\|>$")
WHISPER_SAMPLING_RATE = 16000  # Whisper's front end, when the checkpoint has no
WHISPER_N_FFT = 400  # preprocessor_config.json
WHISPER_HOP = 160


def _require_torch():
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "exporting needs the 'export' extra: pip install 'tandem[export]'"
        ) from exc
    return torch, transformers


def _languages(vocab: dict[str, int]) -> dict[str, int]:
    """Target-language tokens: M2M100 style ``__fr__`` or NLLB style ``fra_Latn``."""
    found = {}
    for token, token_id in vocab.items():
        match = _M2M_LANG.match(token) or _NLLB_LANG.match(token)
        if match:
            found[match.group(1)] = token_id
    return dict(sorted(found.items()))


def _tokenizer_json(hf_dir: Path, out: Path, transformers) -> Path | None:
    target = out / "tokenizer.json"
    if (hf_dir / "tokenizer.json").is_file():
        shutil.copyfile(hf_dir / "tokenizer.json", target)
        return target
    if not any((hf_dir / f).is_file() for f in _TOKENIZER_FILES):
        log.warning("checkpoint has no tokenizer files; bundle is ids-only")
        return None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir), use_fast=True)
    except Exception as exc:  # no tokenizer files, or a slow-only tokenizer
        log.warning("no fast tokenizer in checkpoint; bundle is ids-only", extra={"why": str(exc)})
        return None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    backend.save(str(target))
    return target


def _setting(name: str, config, generation_config) -> int | None:
    """A token setting, preferring the generation config (what ``generate()`` uses)."""
    for source in (generation_config, config):
        value = getattr(source, name, None) if source is not None else None
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def _special(config, generation_config) -> SpecialTokens:
    pad, eos, start = (
        _setting(name, config, generation_config)
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id")
    )
    if pad is None or eos is None or start is None:
        raise BundleError(
            f"checkpoint config lacks special tokens (pad={pad}, eos={eos}, "
            f"decoder_start={start}); set them in config.json"
        )
    return SpecialTokens(pad=pad, eos=eos, decoder_start=start)


def _suppress(generation_config, config) -> tuple[int, ...]:
    found: set[int] = set()
    for source in (generation_config, config):
        if source is None:
            continue
        for words in getattr(source, "bad_words_ids", None) or []:
            if len(words) == 1:
                found.add(int(words[0]))
        for token in getattr(source, "suppress_tokens", None) or []:
            found.add(int(token))
    return tuple(sorted(found))


def export_hf(
    hf_dir: str | Path,
    out_dir: str | Path,
    int8: bool = False,
    name: str | None = None,
    overwrite: bool = False,
    input_pattern: str | None = None,
    input_description: str | None = None,
) -> Manifest:
    """Export a local checkpoint directory to a bundle; verifies the bundle loads."""
    torch, transformers = _require_torch()
    from tandem.runtime import torch_parts

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"{hf_dir} is not a Hugging Face checkpoint (no config.json)")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"output {out_dir} exists and is not empty (use --overwrite)")
        shutil.rmtree(out_dir)
    config = transformers.AutoConfig.from_pretrained(str(hf_dir))
    try:
        family = torch_parts.family_of(config)
    except ValueError as exc:
        raise ConfigError(
            f"unsupported model type {config.model_type!r}; supported: marian, m2m_100/nllb, "
            "bart, mbart, t5/mt5, whisper"
        ) from exc
    model_class = (
        transformers.WhisperForConditionalGeneration
        if family == "whisper"
        else transformers.AutoModelForSeq2SeqLM
    )
    # .float(): a checkpoint saved in fp16/bf16 still exports the fp32 graphs the runtime feeds.
    model = model_class.from_pretrained(str(hf_dir), attn_implementation="eager").float().eval()
    generation_config = getattr(model, "generation_config", None)
    audio = speech = None
    if family == "whisper":
        heads = config.decoder_attention_heads
        hidden = config.d_model
        head_dim = hidden // heads
        enc_layers, dec_layers = config.encoder_layers, config.decoder_layers
        max_src, max_tgt = config.max_source_positions, config.max_target_positions
        audio = _audio_features(hf_dir, model)
    elif family == "t5":
        heads, head_dim = config.num_heads, config.d_kv
        enc_layers, dec_layers = config.num_layers, config.num_decoder_layers
        max_src = max_tgt = T5_MAX_LENGTH
        hidden = config.d_model
    else:
        heads = config.decoder_attention_heads
        hidden = config.d_model
        head_dim = hidden // heads
        enc_layers, dec_layers = config.encoder_layers, config.decoder_layers
        max_src = max_tgt = config.max_position_embeddings
    dims = Dims(
        hidden_size=hidden,
        num_heads=heads,
        head_dim=head_dim,
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        vocab_size=model.get_output_embeddings().out_features,
        max_source_length=max_src,
        max_target_length=max_tgt,
    )
    tokens = _special(config, generation_config)

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        _export_parts(torch, torch_parts, model, family, dims, tmp_dir, audio)
        if int8:
            quantize_bundle_parts(tmp_dir, out_dir)
        else:
            for part in ("encoder", "cache_init", "decoder"):
                shutil.move(tmp_dir / f"{part}.onnx", out_dir / f"{part}.onnx")
    tokenizer_path = _tokenizer_json(hf_dir, out_dir, transformers)
    languages, tok_vocab, vocab = {}, None, {}
    if tokenizer_path is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(tokenizer_path))
        vocab = backend.get_vocab(with_added_tokens=True)
        languages = _languages(vocab) if family != "whisper" else {}
        tok_vocab = backend.get_vocab_size(with_added_tokens=True)
    forced = _setting("forced_bos_token_id", config, generation_config)
    forced_last = _setting("forced_eos_token_id", config, generation_config)
    suppress = _suppress(generation_config, config)
    if family == "whisper":
        speech, languages = _speech_prompt(generation_config, tokens, vocab, dims.vocab_size)
        suppress = tuple(t for t in suppress if t < dims.vocab_size)  # as transformers: ignored
        forced = forced_last = None
    manifest = Manifest(
        name=name or hf_dir.name,
        architecture=family,
        dims=dims,
        tokens=tokens,
        parts={p: f"{p}.onnx" for p in ("encoder", "cache_init", "decoder")},
        opset=OPSET,
        quantization="int8" if int8 else "none",
        tokenizer="tokenizer.json" if tokenizer_path is not None else None,
        tokenizer_vocab_size=tok_vocab,
        languages=languages,
        default_forced_first_token=forced,
        suppress_tokens=suppress,
        forced_last_token=forced_last,
        input_pattern=input_pattern,
        input_description=input_description,
        source={
            "checkpoint": hf_dir.name,
            "model_type": config.model_type,
            "transformers": str(transformers.__version__),
            "torch": str(torch.__version__),
        },
        audio=audio,
        speech=speech,
    )
    fingerprint = compute_fingerprint(out_dir / "encoder.onnx", manifest.hashed_dict())
    data = manifest.to_dict()
    data["fingerprint"] = fingerprint
    (out_dir / MANIFEST_FILE).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    load_bundle(out_dir)  # the exported bundle must pass the same checks every user runs
    log.info("exported", extra={"bundle": str(out_dir), "fingerprint": fingerprint})
    from tandem.runtime.bundle import read_manifest

    return read_manifest(out_dir)


def _audio_features(hf_dir: Path, model) -> AudioFeatures:
    """The log-mel front end: the checkpoint's preprocessor_config.json, else Whisper's.

    The window follows from the encoder (its position table times the convolutions' stride),
    so a preprocessor config that disagrees with it could not drive this model: refused.
    """
    import json

    config = model.config
    encoder = model.get_encoder()
    frames = config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    pre = {}
    pre_path = hf_dir / "preprocessor_config.json"
    if pre_path.is_file():
        try:
            pre = json.loads(pre_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{pre_path} is not valid JSON: {exc}") from exc
    hop = int(pre.get("hop_length", WHISPER_HOP))
    audio = AudioFeatures(
        n_mels=int(pre.get("feature_size", config.num_mel_bins)),
        sampling_rate=int(pre.get("sampling_rate", WHISPER_SAMPLING_RATE)),
        n_fft=int(pre.get("n_fft", WHISPER_N_FFT)),
        hop_length=hop,
        n_samples=int(pre.get("n_samples", frames * hop)),
        n_frames=int(pre.get("nb_max_frames", frames)),
    )
    if audio.n_mels != config.num_mel_bins:
        raise ConfigError(
            f"{pre_path}: feature_size {audio.n_mels} != the model's num_mel_bins "
            f"{config.num_mel_bins}"
        )
    if audio.n_frames != frames or audio.n_samples // audio.hop_length != frames:
        raise ConfigError(
            f"{pre_path}: a window of {audio.n_samples} samples / {audio.n_frames} frames, but the "
            f"encoder takes exactly {frames} frames (max_source_positions "
            f"{config.max_source_positions}); fix chunk_length / n_samples / nb_max_frames"
        )
    return audio


def _speech_prompt(
    generation_config, tokens: SpecialTokens, vocab: dict[str, int], vocab_size: int
) -> tuple[SpeechPrompt, dict[str, int]]:
    """Whisper's prompt rules from the generation config (what ``generate()`` reads).

    Language, task and no-timestamps tokens come from ``lang_to_id``, ``task_to_id`` and
    ``no_timestamps_token_id``; where the generation config lacks them (an old or hand-made
    checkpoint), the tokenizer's ``<|en|>``, ``<|transcribe|>``, ``<|notimestamps|>`` tokens
    stand in, with a warning.
    """
    gc = generation_config
    lang_to_id = dict(getattr(gc, "lang_to_id", None) or {})
    task_to_id = dict(getattr(gc, "task_to_id", None) or {})
    no_ts = getattr(gc, "no_timestamps_token_id", None)
    if not lang_to_id and vocab:
        lang_to_id = {
            t: i for t, i in vocab.items() if _WHISPER_LANG.match(t) and i > tokens.decoder_start
        }
        if lang_to_id:
            log.warning("language tokens taken from the tokenizer (none in generation config)")
    if not task_to_id and vocab:
        task_to_id = {
            t: vocab[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in vocab
        }
    if no_ts is None and "<|notimestamps|>" in vocab:
        no_ts = vocab["<|notimestamps|>"]
    languages = {}
    for token, token_id in lang_to_id.items():
        match = _WHISPER_LANG.match(token)
        if match is None:
            raise ConfigError(f"generation config: lang_to_id has an odd token {token!r}")
        languages[match.group(1)] = int(token_id)
    multilingual = getattr(gc, "is_multilingual", None)
    if multilingual is None:
        multilingual = bool(languages)
    forced = getattr(gc, "forced_decoder_ids", None) or []
    begin = [int(t) for t in (getattr(gc, "begin_suppress_tokens", None) or []) if t < vocab_size]
    max_new = getattr(gc, "max_new_tokens", None)
    max_length = getattr(gc, "max_length", None)
    speech = SpeechPrompt(
        start_of_transcript=tokens.decoder_start,
        multilingual=bool(multilingual),
        task_tokens={str(k): int(v) for k, v in task_to_id.items()},
        no_timestamps=None if no_ts is None else int(no_ts),
        forced_decoder_ids=[[int(p), None if t is None else int(t)] for p, t in forced],
        begin_suppress_tokens=begin,
        max_length=None if max_length is None else int(max_length),
        max_new_tokens=None if max_new is None else int(max_new),
    )
    return speech, dict(sorted(languages.items()))


def _export_parts(
    torch, torch_parts, model, family: str, dims: Dims, out: Path, audio: AudioFeatures | None
) -> None:
    layers = dims.decoder_layers
    batch, src, tgt, past = 2, 5, 2, 3
    ids = torch.ones((batch, src), dtype=torch.long)
    mask = torch.ones((batch, src), dtype=torch.long)
    hidden = torch.zeros((batch, src, dims.hidden_size))
    cross_names = [f"cross_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    past_names = [f"past_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    kv = (batch, dims.num_heads, past, dims.head_dim)
    cross_shape = (batch, dims.num_heads, src, dims.head_dim)
    step = (
        torch_parts.T5DecoderStep(model)
        if family == "t5"
        else torch_parts.BartDecoderStep(model, family)
    )
    encoder_job = (
        "encoder",
        torch_parts.EncoderPart(model),
        (ids, mask),
        ["input_ids", "attention_mask"],
        ["hidden_states"],
        {"input_ids": {0: "batch", 1: "src"}, "attention_mask": {0: "batch", 1: "src"},
         "hidden_states": {0: "batch", 1: "src"}},
    )  # fmt: skip
    if audio is not None:
        encoder_job = (
            "encoder",
            torch_parts.AudioEncoderPart(model),
            (torch.randn((batch, audio.n_mels, audio.n_frames)),),
            ["input_features"],
            ["hidden_states"],
            {"input_features": {0: "batch"}, "hidden_states": {0: "batch"}},
        )
    jobs = [
        encoder_job,
        (
            "cache_init",
            torch_parts.CacheInitPart(model, family),
            (hidden,),
            ["hidden_states"],
            cross_names,
            {"hidden_states": {0: "batch", 1: "src"},
             **{n: {0: "batch", 2: "src"} for n in cross_names}},
        ),
        (
            "decoder",
            step,
            (
                torch.ones((batch, tgt), dtype=torch.long),
                torch.ones((batch, tgt), dtype=torch.long),
                torch.ones((batch, past), dtype=torch.long),
                mask,
                *[torch.zeros(kv) for _ in past_names],
                *[torch.zeros(cross_shape) for _ in cross_names],
            ),
            ["input_ids", "position_ids", "self_mask", "encoder_mask", *past_names, *cross_names],
            ["logits", *present_names],
            {
                "input_ids": {0: "batch", 1: "new"},
                "position_ids": {0: "batch", 1: "new"},
                "self_mask": {0: "batch", 1: "past"},
                "encoder_mask": {0: "batch", 1: "src"},
                "logits": {0: "batch"},
                **{n: {0: "batch", 2: "past"} for n in past_names},
                **{n: {0: "batch", 2: "src"} for n in cross_names},
                **{n: {0: "batch", 2: "total"} for n in present_names},
            },
        ),
    ]  # fmt: skip
    for part, module, args, inputs, outputs, axes in jobs:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(out / f"{part}.onnx"),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
