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
