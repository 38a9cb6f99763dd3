"""Language-model FLOPs of a VLM's decoder, at prefill and per decode step (pure math).

Grouped-query attention (sliding-window layers included, as Gemma 3 has them) and the gated
three-matrix MLP, or Qwen3-VL-MoE's router and routed experts; the ``lm_head`` is counted by
:func:`visprune.flops.model_flops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .blocks import attention, check_count


def mlp_per_token(text: Any, model_type: str) -> list[float]:
    """MLP FLOPs of one token in each decoder layer.

    Dense layers: gate, up and down projections (``6 d m``). Qwen3-VL-MoE's sparse layers: the
    router (``2 d E``) plus ``num_experts_per_tok`` routed experts of width
    ``moe_intermediate_size`` each. Every transformers experts kernel (the eager per-expert
    loop, ``batched_mm``, ``grouped_mm``) computes only the routed token-expert pairs, so that is
    what is counted, never all ``E`` experts densely; the model has no shared expert.
    """
    d, layers = text.hidden_size, text.num_hidden_layers
    dense = 6.0 * d * text.intermediate_size
    if model_type != "qwen3_vl_moe" or not getattr(text, "num_experts", 0):
        return [dense] * layers
    sparse = 2.0 * d * text.num_experts + text.num_experts_per_tok * 6.0 * d * (
        text.moe_intermediate_size
    )
    step = getattr(text, "decoder_sparse_step", 1) or 1
    dense_only = set(getattr(text, "mlp_only_layers", None) or ())
    return [
        sparse if layer not in dense_only and (layer + 1) % step == 0 else dense
        for layer in range(layers)
    ]


def language_flops(
    text: Any,
    model_type: str,
    visual_tokens: int,
    kept: int,
    text_tokens: int,
    decode_steps: int,
    layer_kept_visual_tokens: Sequence[int] | None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Attention and MLP FLOPs of the decoder, at prefill and over all decode steps.

    Parameters
    ----------
    text : transformers.PretrainedConfig
        The VLM's ``text_config``.
    model_type : str
        The VLM's ``model_type`` (Qwen3-VL-MoE routes its MLPs).
    visual_tokens : int
        Visual tokens before pruning.
    kept : int
        Visual tokens after pruning.
    text_tokens : int
        Text tokens of the prompt.
    decode_steps : int
        Tokens decoded after prefill, each against the cache of all earlier ones.
    layer_kept_visual_tokens : sequence of int, optional
        Visual tokens each layer sees at prefill (pruning inside the language model).

    Returns
    -------
    tuple
        ``((attention, mlp) at prefill, (attention, mlp) summed over the decode steps)``.
    """
    d, layers = text.hidden_size, text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    mlp_per_layer = mlp_per_token(text, model_type)
    mlp_total = sum(mlp_per_layer)
    n = kept + text_tokens
    layer_types = list(getattr(text, "layer_types", None) or ["full_attention"] * layers)
    sliding = layer_types.count("sliding_attention")
    window = getattr(text, "sliding_window", None) if sliding else None

    def lm(queries: int, keys: int) -> tuple[float, float]:
        # A decode step's sliding-window layers read only the window the cache keeps.
        narrow = keys if queries > 1 or window is None else min(keys, window)
        attn = (layers - sliding) * attention(queries, keys, d, heads, kv_heads, head_dim)
        attn += sliding * attention(queries, narrow, d, heads, kv_heads, head_dim)
        return attn, queries * mlp_total

    if layer_kept_visual_tokens is None:
        prefill = lm(n, n)
    else:
        prefill = _layered_prefill(
            layer_kept_visual_tokens,
            visual_tokens,
            text_tokens,
            layer_types,
            lambda index, q: (
                attention(q, q, d, heads, kv_heads, head_dim),
                q * mlp_per_layer[index],
            ),
        )
    d_attn = d_mlp = 0.0
    for step in range(1, decode_steps + 1):
        a, m = lm(1, n + step)
        d_attn += a
        d_mlp += m
    return prefill, (d_attn, d_mlp)


def _layered_prefill(counts, visual_tokens, text_tokens, layer_types, layer):
    """Prefill attention and MLP FLOPs summed over layers that see different token counts."""
    if len(counts) != len(layer_types):
        raise ValueError(
            f"layer_kept_visual_tokens has {len(counts)} entries for {len(layer_types)} layers."
        )
    attn = mlp = 0.0
    for index, count in enumerate(counts):
        check_count("layer_kept_visual_tokens", count)
        if count > visual_tokens:
            raise ValueError(f"a layer keeps {count} of {visual_tokens} visual tokens.")
        a, m = layer(index, count + text_tokens)
        attn += a
        mlp += m
    return attn, mlp
