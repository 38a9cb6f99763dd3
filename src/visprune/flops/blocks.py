"""Matmul FLOPs of the building blocks every family shares (pure math).

A multiply-add counts as two FLOPs. Attention is grouped-query attention with ``heads`` query
heads and ``kv_heads`` key / value heads of width ``head_dim``; the ViT layers are pre-norm with
full attention and a two-matrix MLP, as in CLIP, SigLIP and InternViT.
"""

from __future__ import annotations

from typing import Any

#: Vision towers of the LLaVA families and Gemma 3 that :func:`vit_tower` counts.
VIT_TYPES = ("clip_vision_model", "siglip_vision_model")


def check_count(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` if it is an int >= ``minimum`` (not a bool), else a ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def attention(
    queries: int, keys: int, hidden: int, heads: int, kv_heads: int, head_dim: int
) -> float:
    """q/k/v/o projections of ``queries`` tokens plus scores and weighted sum over ``keys``."""
    projections = 2 * queries * hidden * head_dim * (2 * heads + 2 * kv_heads)
    return float(projections + 4 * queries * keys * heads * head_dim)


def vit_layers(tokens: int, hidden: int, ffn: int, layers: int) -> float:
    """Pre-norm ViT layers (full attention over ``tokens``, two-matrix MLP)."""
    return layers * (attention(tokens, tokens, hidden, 1, 1, hidden) + 4.0 * tokens * hidden * ffn)


def vit_tower(vision: Any) -> tuple[float, int]:
    """FLOPs of one CLIP / SigLIP tower input, and the tokens the tower outputs."""
    vtype = getattr(vision, "model_type", None)
    if vtype not in VIT_TYPES:
        raise ValueError(
            f"vision tower {vtype!r} is not supported; supported: {', '.join(VIT_TYPES)}."
        )
    d, patch = vision.hidden_size, vision.patch_size
    patches = (vision.image_size // patch) ** 2
    tokens = patches + (1 if vtype == "clip_vision_model" else 0)  # CLIP prepends a CLS token
    channels = getattr(vision, "num_channels", 3)
    embed = 2.0 * patches * channels * patch * patch * d
    ffn = vision.intermediate_size
    tower = embed + vit_layers(tokens, d, ffn, vision.num_hidden_layers)
    if vtype == "siglip_vision_model" and getattr(vision, "vision_use_head", True):
        # Attention-pooling head (one probe query over every token, then an MLP on it): the
        # tower computes it even though the VLM only reads hidden states.
        tower += 2.0 * tokens * d * 2 * d + attention(1, tokens, d, 1, 1, d) - 2.0 * d * 2 * d
        tower += 4.0 * d * ffn
    return tower, tokens
