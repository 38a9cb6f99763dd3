"""What layer-stage methods read inside the language model, recomputed from its own modules.

The attention backend (SDPA, flash) never materialises attention weights, and forcing eager
attention would slow every layer. The one attention row a method needs (the last prompt
token's) is recomputed instead from the layer's own ``input_layernorm``, ``q_proj`` / ``k_proj``
(Qwen3's ``q_norm`` / ``k_norm``) and rotary embedding, as kvpress does for SnapKV: one query
row and the keys, ``O(L d d_kv)``, a small share of one layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import compat_layers


def _heads(projection: Tensor, attention: Any, norm_name: str) -> Tensor:
    """``(B, q, H * hd) -> (B, H, q, hd)``, with the family's per-head norm when it has one."""
    b, q, _ = projection.shape
    heads = projection.view(b, q, -1, attention.head_dim)
    norm = getattr(attention, norm_name, None)
    if norm is not None:
        heads = norm(heads)
    return heads.transpose(1, 2)


def _rotary(attention: Any, states: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    rotate = compat_layers.rotary_function(attention)
    return rotate(states, states, cos, sin)[0]


def keys(layer: Any, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The layer's keys after RoPE, ``(B, H_kv, L, hd)``, for the hidden states entering it.

    ``cos`` / ``sin`` are ``(B, L, hd)``.
    """
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    return _rotary(attention, _heads(attention.k_proj(normed), attention, "k_norm"), cos, sin)


def last_token_attention(
    layer: Any, hidden: Tensor, cos: Tensor, sin: Tensor, query: Tensor, mask: Tensor
) -> Tensor:
    """The attention one token per row pays to every token at ``layer``, averaged over heads.

    ``softmax(q k^T * scaling)`` over the keys the query sees, in float32, as the layer's eager
    attention computes it.

    Parameters
    ----------
    layer : decoder layer
    hidden : Tensor
        ``(B, L, d)`` the hidden states entering the layer.
    cos : Tensor
        ``(B, L, hd)`` the cosines of its rotary embedding.
    sin : Tensor
        ``(B, L, hd)`` the sines of its rotary embedding.
    query : Tensor
        ``(B,)`` the column of each row's query token (its last prompt token).
    mask : Tensor
        ``(B, L)`` bool, the keys the query attends to (not padding, not after it).

    Returns
    -------
    Tensor
        ``(B, L)`` float32 attention weights, 0 on masked keys; each row sums to 1.
    """
    attention = layer.self_attn
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    normed = layer.input_layernorm(hidden)
    q = _heads(attention.q_proj(normed[rows, query].unsqueeze(1)), attention, "q_norm")
    q = _rotary(attention, q, cos[rows, query].unsqueeze(1), sin[rows, query].unsqueeze(1))
    k = _rotary(attention, _heads(attention.k_proj(normed), attention, "k_norm"), cos, sin)
    k = k.repeat_interleave(attention.num_key_value_groups, dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(-2) * attention.scaling
    logits = logits.masked_fill(~mask[:, None, :], -torch.inf)
    return logits.softmax(dim=-1).mean(dim=1)


def key_norms(layer: Any, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``(B, L)`` float32 L1 norm of each token's keys at ``layer`` (all heads together).

    The published code takes the norm after ``repeat_kv``, which scales every norm by the same
    group count and so ranks the tokens identically.
    """
    k = keys(layer, hidden, cos, sin).float()
    return k.abs().sum(dim=-1).sum(dim=1)
