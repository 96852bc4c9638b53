"""Torch modules that compute the three bundle parts from a Hugging Face seq2seq model.

Why our own decoder step instead of tracing Hugging Face's forward: its cache objects and mask
builders change between releases, and it has no notion of rows with different lengths in one
batch. We re-express the decoder over the model's own weights (same Linear and LayerNorm
modules, so numerics match) with explicit position ids and masks; that graph supports prefix
prefill, ragged batches and a growing cache, and exports the same way on every version.
Imported only by the exporter: torch is an optional dependency.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_NEG = -1e9  # additive mask value: large, finite (a fully masked row stays NaN-free)


def family_of(config) -> str:
    model_type = config.model_type
    if model_type in ("marian",):
        return "marian"
    if model_type in ("m2m_100", "nllb", "nllb-moe"):
        return "m2m_100"
    if model_type in ("bart",):
        return "bart"
    if model_type in ("mbart",):
        return "mbart"
    if model_type in ("t5", "mt5"):
        return "t5"
    if model_type in ("whisper",):
        return "whisper"
    raise ValueError(model_type)


def _activation(name: str):
    if name in ("gelu", "gelu_python"):
        return nn.functional.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: nn.functional.gelu(x, approximate="tanh")
    if name in ("relu",):
        return nn.functional.relu
    if name in ("swish", "silu"):
        return nn.functional.silu
    raise ValueError(f"unsupported activation {name!r}")


class EncoderPart(nn.Module):
    """input_ids (B, S), attention_mask (B, S) → hidden_states (B, S, D)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids, attention_mask):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state


class AudioEncoderPart(nn.Module):
    """input_features (B, n_mels, frames) → hidden_states (B, frames / 2, D): Whisper's encoder.

    The window is fixed (the encoder adds its whole position table), so only the batch varies.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_features):
        return self.encoder(input_features=input_features, return_dict=True).last_hidden_state


def _split_heads(x, heads: int):  # (B, T, H*Dh) → (B, H, T, Dh)
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


class _BartLayers:
    """Accessors shared by Marian, M2M100/NLLB, BART and mBART (one layer design)."""

    @staticmethod
    def cross_proj(layer):
        return layer.encoder_attn.k_proj, layer.encoder_attn.v_proj


class CacheInitPart(nn.Module):
    """hidden_states (B, S, D) → cross_key_i, cross_value_i (B, H, S, Dh) for every layer."""

    def __init__(self, model, family: str) -> None:
        super().__init__()
        decoder = model.get_decoder()
        self.heads = (
            model.config.num_heads if family == "t5" else model.config.decoder_attention_heads
        )
        if family == "t5":
            self.projs = [
                (blk.layer[1].EncDecAttention.k, blk.layer[1].EncDecAttention.v)
                for blk in decoder.block
            ]
        else:
            self.projs = [_BartLayers.cross_proj(layer) for layer in decoder.layers]
        self._mods = nn.ModuleList([m for pair in self.projs for m in pair])

    def forward(self, hidden_states):
        out = []
        for k_proj, v_proj in self.projs:
            out.append(_split_heads(k_proj(hidden_states), self.heads))
            out.append(_split_heads(v_proj(hidden_states), self.heads))
        return tuple(out)


def _attend(q, k, v, bias):
    scores = torch.matmul(q, k.transpose(-1, -2)) + bias  # (B, H, T, K)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v)  # (B, H, T, Dh)
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)


def _masks(self_mask, encoder_mask, t: int, dtype):
    """Additive biases: self (B, 1, T, P+T) causal over new tokens; cross (B, 1, 1, S)."""
    p = self_mask.shape[1]
    b = self_mask.shape[0]
    new = torch.ones((b, t), dtype=self_mask.dtype)
    keys = torch.cat([self_mask, new], dim=1)  # (B, P+T)
    key_idx = torch.arange(p + t)[None, :]
    query_idx = torch.arange(t)[:, None] + p
    causal = key_idx <= query_idx  # (T, P+T)
    allowed = causal[None, None] & (keys[:, None, None, :] > 0)
    zero = torch.zeros((), dtype=dtype)
    neg = torch.full((), _NEG, dtype=dtype)
    self_bias = torch.where(allowed, zero, neg)
    cross_bias = torch.where(encoder_mask[:, None, None, :] > 0, zero, neg)
    return self_bias, cross_bias, keys


class BartDecoderStep(nn.Module):
    """Decoder step for the BART layer design (Marian, M2M100/NLLB, BART, mBART, Whisper)."""

    def __init__(self, model, family: str) -> None:
        super().__init__()
        config = model.config
        decoder = model.get_decoder()
        self.decoder = decoder
        self.lm_head = model.get_output_embeddings()
        bias = getattr(model, "final_logits_bias", None)
        self.register_buffer("logits_bias", bias.reshape(-1) if bias is not None else None)
        self.heads = config.decoder_attention_heads
        self.scaling = (config.d_model // self.heads) ** -0.5
        self.embed_scale = (
            math.sqrt(config.d_model) if getattr(config, "scale_embedding", False) else 1.0
        )
        self.pre_norm = family in ("m2m_100", "mbart", "whisper")
        self.act = _activation(config.activation_function)
        positions = decoder.embed_positions
        if family in ("marian", "whisper"):
            table, offset = positions.weight, 0
        elif family == "m2m_100":
            table, offset = positions.weights, config.pad_token_id + 1
        else:  # BART and mBART learned positions with offset 2
            table, offset = positions.weight, getattr(positions, "offset", 2)
        self.register_buffer("pos_table", table.detach().clone())
        self.pos_offset = offset
        self.layernorm_embedding = getattr(decoder, "layernorm_embedding", None)
        self.final_norm = getattr(decoder, "layer_norm", None)

    def forward(self, input_ids, position_ids, self_mask, encoder_mask, *caches):
        n = len(self.decoder.layers)
        past, cross = caches[: 2 * n], caches[2 * n :]
        t = input_ids.shape[1]
        x = self.decoder.embed_tokens.weight[input_ids] * self.embed_scale
        x = x + self.pos_table[position_ids + self.pos_offset]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        self_bias, cross_bias, _ = _masks(self_mask, encoder_mask, t, x.dtype)
        presents = []
        for i, layer in enumerate(self.decoder.layers):
            attn = layer.self_attn
            residual = x
            h = layer.self_attn_layer_norm(x) if self.pre_norm else x
            q = _split_heads(attn.q_proj(h) * self.scaling, self.heads)
            k = torch.cat([past[2 * i], _split_heads(attn.k_proj(h), self.heads)], dim=2)
            v = torch.cat([past[2 * i + 1], _split_heads(attn.v_proj(h), self.heads)], dim=2)
            presents += [k, v]
            x = residual + attn.out_proj(_attend(q, k, v, self_bias))
            if not self.pre_norm:
                x = layer.self_attn_layer_norm(x)
            xattn = layer.encoder_attn
            residual = x
            h = layer.encoder_attn_layer_norm(x) if self.pre_norm else x
            q = _split_heads(xattn.q_proj(h) * self.scaling, self.heads)
            x = residual + xattn.out_proj(_attend(q, cross[2 * i], cross[2 * i + 1], cross_bias))
            if not self.pre_norm:
                x = layer.encoder_attn_layer_norm(x)
            residual = x
            h = layer.final_layer_norm(x) if self.pre_norm else x
            x = residual + layer.fc2(self.act(layer.fc1(h)))
            if not self.pre_norm:
                x = layer.final_layer_norm(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.lm_head(x[:, -1, :])
        if self.logits_bias is not None:
            logits = logits + self.logits_bias
        return (logits, *presents)


class T5DecoderStep(nn.Module):
    """Decoder step for T5 and mT5: RMS norms, relative position bias, unscaled attention."""

    def __init__(self, model) -> None:
        super().__init__()
        config = model.config
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.heads = config.num_heads
        self.tie = bool(getattr(config, "tie_word_embeddings", True))
        self.d_model = config.d_model
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.rel_bias = self.decoder.block[0].layer[0].SelfAttention.relative_attention_bias
        self.act = _activation(config.dense_act_fn)

    def _bucket(self, relative):
        # Unidirectional T5 bucketing (decoder self-attention), as in the T5 paper.
        n = self.num_buckets
        relative = -torch.clamp(relative, max=0)
        max_exact = n // 2
        is_small = relative < max_exact
        large = max_exact + (
            torch.log(relative.float() / max_exact)
            / math.log(self.max_distance / max_exact)
            * (n - max_exact)
        ).to(torch.long)
        large = torch.clamp(large, max=n - 1)
        return torch.where(is_small, relative, large)

    def _ff(self, ff, h):
        dense = ff.DenseReluDense
        if hasattr(dense, "wi_0"):
            return dense.wo(self.act(dense.wi_0(h)) * dense.wi_1(h))
        return dense.wo(self.act(dense.wi(h)))

    def forward(self, input_ids, position_ids, self_mask, encoder_mask, *caches):
        n = len(self.decoder.block)
        past, cross = caches[: 2 * n], caches[2 * n :]
        t = input_ids.shape[1]
        x = self.decoder.embed_tokens.weight[input_ids]
        self_bias, cross_bias, keys = _masks(self_mask, encoder_mask, t, x.dtype)
        key_pos = torch.cumsum(keys, dim=1) - 1  # (B, K): valid slots are in time order
        rel = key_pos[:, None, :] - position_ids[:, :, None]  # (B, T, K)
        pos_bias = self.rel_bias(self._bucket(rel)).permute(0, 3, 1, 2)  # (B, H, T, K)
        self_bias = self_bias + pos_bias
        presents = []
        for i, block in enumerate(self.decoder.block):
            sa = block.layer[0]
            h = sa.layer_norm(x)
            attn = sa.SelfAttention
            q = _split_heads(attn.q(h), self.heads)
            k = torch.cat([past[2 * i], _split_heads(attn.k(h), self.heads)], dim=2)
            v = torch.cat([past[2 * i + 1], _split_heads(attn.v(h), self.heads)], dim=2)
            presents += [k, v]
            x = x + attn.o(_attend(q, k, v, self_bias))
            ca = block.layer[1]
            h = ca.layer_norm(x)
            q = _split_heads(ca.EncDecAttention.q(h), self.heads)
            x = x + ca.EncDecAttention.o(_attend(q, cross[2 * i], cross[2 * i + 1], cross_bias))
            ff = block.layer[2]
            x = x + self._ff(ff, ff.layer_norm(x))
        x = self.decoder.final_layer_norm(x)
        h = x[:, -1, :]
        if self.tie:
            h = h * (self.d_model**-0.5)
        return (self.lm_head(h), *presents)
