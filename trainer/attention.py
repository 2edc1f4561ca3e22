"""Padding-free attention for any device.

TRL's padding-free SFT collator concatenates a batch's sequences into one row and passes ``cu_seq_lens_q`` (the
sequence boundaries). FlashAttention uses them directly; PyTorch's SDPA does not, so without FlashAttention the
sequences would attend to each other. ``VARLEN_ATTENTION`` runs SDPA once per sequence of such a row (exact, causal,
no padding computed) and plain SDPA with its mask for every other input (evaluation with padding, generation).
"""

from __future__ import annotations

import importlib.util
import itertools

VARLEN_ATTENTION = "tunefleet_varlen"
_registered = False


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``query``/``key``/``value`` are ``[batch, heads, length, head_dim]``; returns ``[batch, length, heads, dim]``."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    edges = bounds.tolist()
    gqa = key.shape[1] != query.shape[1]
    p = dropout if module.training else 0.0
    parts = [
        scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                     scale=scaling, dropout_p=p, enable_gqa=gqa)
        for s, e in itertools.pairwise(edges)
        if e > s
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register_varlen_attention() -> str:
    """Make ``VARLEN_ATTENTION`` a valid ``attn_implementation``; return its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
        AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)
        _registered = True
    return VARLEN_ATTENTION


def padding_free_attention(*, cuda: bool, half_precision: bool) -> str:
    """FlashAttention 2 where it is installed and usable (CUDA, fp16/bf16), else ``VARLEN_ATTENTION``."""
    if cuda and half_precision and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return register_varlen_attention()
