"""Tiny Hugging Face seq2seq models built from configs with random weights (no downloads).

Random models tend to repeat one token under greedy decoding, which would make "our ids ==
transformers' ids" a weak check. So weights are perturbed until greedy paths vary: a larger
init std, random LayerNorm scales and biases, and an untied, noisier LM head.
"""

from __future__ import annotations

from pathlib import Path

VOCAB = 96
ARCHS = ("marian", "m2m_100", "t5", "bart")


def build(arch: str, out: Path, seed: int = 0) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        d_model=32,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    bart_like = dict(
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        init_std=0.5,
        tie_word_embeddings=False,
        dropout=0.0,
    )
    if arch == "marian":
        model = tf.MarianMTModel(tf.MarianConfig(**common, **bart_like, scale_embedding=True))
    elif arch == "m2m_100":
        common["decoder_start_token_id"] = 1
        model = tf.M2M100ForConditionalGeneration(
            tf.M2M100Config(**common, **bart_like, scale_embedding=True)
        )
    elif arch == "bart":
        common.update(bos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=1)
        model = tf.BartForConditionalGeneration(tf.BartConfig(**common, **bart_like))
    elif arch == "t5":
        model = tf.T5ForConditionalGeneration(
            tf.T5Config(
                **common,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                tie_word_embeddings=False,
                initializer_factor=1.5,
                dropout_rate=0.0,
            )
        )
    else:
        raise ValueError(arch)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                param.add_(torch.randn_like(param) * 0.3)
            elif "lm_head" in name:
                param.normal_(0.0, 1.0)
    model.eval()
    model.save_pretrained(out)
    return out


def hf_generate(model, src: list[int], max_new_tokens: int, forced: int | None = None) -> list[int]:
    """transformers' greedy ids without the decoder start token."""
    import torch

    kwargs = {"forced_bos_token_id": forced} if forced is not None else {}
    with torch.no_grad():
        out = model.generate(
            torch.tensor([src]),
            attention_mask=torch.ones((1, len(src)), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            **kwargs,
        )
    return out[0].tolist()[1:]


def write_word_tokenizer(path: Path, languages: tuple[str, ...] = ("en", "fr")) -> dict[str, int]:
    """A word-level ``tokenizers`` JSON over the tiny vocabulary: ``w5 w17 …`` ↔ ids.

    Special ids match the tiny models (pad 0, eos 1, unk 2); language tokens ``__xx__`` follow,
    so the exporter detects them as target-language tokens (M2M100 style).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for i, lang in enumerate(languages):
        vocab[f"__{lang}__"] = 3 + i
    for i in range(len(vocab), VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(str(path))
    return vocab


# -- Whisper ---------------------------------------------------------------------------------
# Token ids of the real Whisper vocabularies (multilingual 51865, English-only 51864), so the
# prompt rules run on the ids users meet; only a few of the 99 languages are listed.
WHISPER_LANGS = {"en": 50259, "zh": 50260, "de": 50261, "es": 50262, "fr": 50265}
WHISPER_SUPPRESS = [1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90,
                    91, 92, 93, 359, 503, 522, 542, 873, 893, 902, 918, 922, 931, 1350, 1853,
                    50358, 50359, 50360, 50361, 50362]  # fmt: skip


def build_whisper(
    out: Path,
    seed: int = 0,
    multilingual: bool = True,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_source_positions: int = 50,
    max_target_positions: int = 64,
    n_mels: int = 80,
    max_length: int = 24,
    perturb: bool = True,
    eos_boost: float = 1.0,
    timestamp_boost: float = 1.0,
) -> Path:
    """A random-weight Whisper checkpoint with a real-looking generation config.

    ``max_source_positions`` 50 makes a 1 s window (100 frames) instead of 30 s (3000), which
    keeps the tests fast. With ``perturb`` the weights are perturbed as the text models' are and
    the output projection is untied and noisy, so greedy paths vary; without it the model has
    transformers' own initialisation and tied embeddings, as real checkpoints do.
    """
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if multilingual:
        vocab, eos, sot, no_ts = 51865, 50257, 50258, 50363
        forced = [[1, None], [2, 50359]]
        extra = dict(
            lang_to_id={f"<|{k}|>": v for k, v in WHISPER_LANGS.items()},
            task_to_id={"translate": 50358, "transcribe": 50359},
        )
    else:
        vocab, eos, sot, no_ts = 51864, 50256, 50257, 50362
        forced = [[1, 50362]]
        extra = {}
    config = tf.WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=max_source_positions,
        max_target_positions=max_target_positions,
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=sot,
        begin_suppress_tokens=[220, eos],
        suppress_tokens=WHISPER_SUPPRESS,
        dropout=0.0,
        init_std=0.3 if perturb else 0.02,
        tie_word_embeddings=not perturb,
    )
    model = tf.WhisperForConditionalGeneration(config)
    if perturb:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "layer_norm" in name:
                    param.add_(torch.randn_like(param) * 0.3)
                elif "proj_out" in name:
                    param.normal_(0.0, 1.0)
                    param[eos] *= eos_boost  # > 1: sequences end early, exercising EOS
                    # > 1: timestamps of the first second (<|0.00|>..<|0.98|>) become likely,
                    # so transformers' segment rule (speech.split_segments) gets exercised.
                    param[no_ts + 1 : no_ts + 51] *= timestamp_boost
    model.generation_config = tf.GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        begin_suppress_tokens=[220, eos],
        suppress_tokens=WHISPER_SUPPRESS,
        no_timestamps_token_id=no_ts,
        is_multilingual=multilingual,
        forced_decoder_ids=forced,
        max_length=max_length,
        **extra,
    )
    model.eval()
    model.save_pretrained(out)
    return out


def whisper_signals(rng, n: int, rate: int = 16000) -> list:
    """``n`` test signals of up to 1 s: noise, tones, chirps and speech-like bursts."""
    import numpy as np

    out = []
    for i in range(n):
        length = int(rng.integers(rate // 10, rate))
        t = np.arange(length) / rate
        kind = i % 4
        if kind == 0:
            x = rng.standard_normal(length) * rng.uniform(0.01, 0.5)
        elif kind == 1:
            x = 0.5 * np.sin(2 * np.pi * rng.uniform(80, 4000) * t)
        elif kind == 2:
            f0, f1 = rng.uniform(100, 500), rng.uniform(1000, 6000)
            x = 0.3 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / t[-1] / 2) * t)
        else:  # voiced bursts: a pitch with formant-like harmonics, gated like syllables
            pitch = rng.uniform(90, 250)
            x = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 12))
            gate = (np.sin(2 * np.pi * rng.uniform(2, 6) * t) > 0).astype(float)
            x = 0.2 * x * gate + 0.01 * rng.standard_normal(length)
        out.append(np.clip(x, -1, 1).astype(np.float32))
    return out


def whisper_generate(model, features, language: str | None, max_new_tokens: int | None = None):
    """transformers' greedy Whisper ids (no timestamps) for one window of features."""
    import torch

    kwargs = {"language": language, "task": "transcribe"} if language else {}
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(features[None]), do_sample=False, num_beams=1, **kwargs
        )
    return out[0].tolist()


def write_whisper_tokenizer(path: Path, multilingual: bool = True) -> None:
    """A word-level ``tokenizers`` JSON over a Whisper vocabulary: ``w17 w942 …`` ↔ ids, the
    special tokens (``<|endoftext|>``, ``<|en|>``, ``<|notimestamps|>``, …) marked special so
    decoding drops them, as Whisper's own tokenizer does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    eos = 50257 if multilingual else 50256
    size = 51865 if multilingual else 51864
    vocab = {f"w{i}": i for i in range(eos)}
    special = {eos: "<|endoftext|>", eos + 1: "<|startoftranscript|>"}
    if multilingual:
        special.update({v: f"<|{k}|>" for k, v in WHISPER_LANGS.items()})
        special.update({50358: "<|translate|>", 50359: "<|transcribe|>", 50363: "<|notimestamps|>"})
    else:
        special[50362] = "<|notimestamps|>"
    for i in range(eos, size):
        vocab[special.get(i, f"<|special{i}|>")] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t, i in vocab.items() if i >= eos])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(str(path))
