"""What layer-stage methods read from transformers inside the language model.

Layer-stage methods (FastV, PyramidDrop, DART) shorten the sequence between decoder layers.
The seams they rely on, the same in every tested release: ``language_model.layers`` (decoder
layers called as ``layer(hidden_states, attention_mask=..., position_embeddings=(cos, sin),
position_ids=..., cache=... | past_key_values=...)``), each with ``input_layernorm`` and a
``self_attn`` holding ``q_proj`` / ``k_proj`` (and Qwen3's ``q_norm`` / ``k_norm``),
``head_dim``, ``scaling`` and ``num_key_value_groups``; ``cos`` / ``sin`` of shape
``(B or 1, L, head_dim)`` (Qwen-VL's M-RoPE sections are already merged into them); the
family module's ``apply_rotary_pos_emb(q, k, cos, sin)``; ``masking_utils.create_causal_mask``
(cache parameter ``cache`` from 5.24, ``past_key_values`` before); ``DynamicCache.layers[i]``
with ``keys`` / ``values`` of shape ``(B, H_kv, L, head_dim)``.

Like :mod:`visprune.compat` (whose :class:`~visprune.compat.PruningNotApplied` they raise), these
functions are the only place that reads these seams; a moved seam raises instead of running
unpruned.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from .compat import CACHE_KEYWORDS, PruningNotApplied

#: Attributes of a decoder layer's attention that the score computation reads.
ATTENTION_PARTS = ("q_proj", "k_proj", "head_dim", "scaling", "num_key_value_groups")


def decoder_layers(language_model: Any) -> list:
    """The decoder layers of ``language_model``, checked for what in-LLM pruning reads.

    Raises
    ------
    PruningNotApplied
        When the layers, their attention or the rotary function are not where visprune looks,
        or a layer uses a kind of attention whose mask visprune does not rebuild.
    """
    layers = getattr(language_model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise PruningNotApplied(
            f"{type(language_model).__name__} has no decoder layers at .layers, where "
            "layer-stage methods shorten the sequence"
        )
    config = getattr(language_model, "config", None)
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise PruningNotApplied(
            f"{type(language_model).__name__} has {', '.join(sorted(kinds))} layers; layer-stage "
            "methods rebuild only full causal attention masks between layers. Use a method that "
            "prunes before the language model on this model",
            usage=True,
        )
    for layer in layers:
        attention = getattr(layer, "self_attn", None)
        missing = [part for part in ATTENTION_PARTS if not hasattr(attention, part)]
        if not hasattr(layer, "input_layernorm"):
            missing.append("input_layernorm")
        if missing:
            raise PruningNotApplied(
                f"decoder layer {type(layer).__name__} lacks {', '.join(missing)}, from which "
                "layer-stage methods compute their attention scores"
            )
        rotary_function(attention)
    return list(layers)


def rotary_function(attention: Any):
    """The family's ``apply_rotary_pos_emb(q, k, cos, sin)`` used by ``attention``'s forward."""
    module = inspect.getmodule(type(attention))
    return _required(
        getattr(module, "apply_rotary_pos_emb", None),
        f"{type(attention).__name__}'s module has no apply_rotary_pos_emb, with which "
        "layer-stage methods rotate the queries and keys they score with",
    )


def final_norm(language_model: Any) -> Any:
    """The language model's final norm (DART compares hidden states after it)."""
    return _required(
        getattr(language_model, "norm", None),
        f"{type(language_model).__name__} has no final norm at .norm, which DART applies "
        "to the hidden states it compares",
    )


def _required(function: Any, missing: str) -> Any:
    """``function`` when it is callable; otherwise :class:`PruningNotApplied` with ``missing``
    (what is not where visprune looks, and what needs it)."""
    if not callable(function):
        raise PruningNotApplied(missing)
    return function


def causal_mask(config: Any, inputs_embeds: Any, attention_mask: Any) -> Any:
    """The causal mask the language model builds for a prefill of ``inputs_embeds`` with the
    2-D ``attention_mask``, in the format of its attention implementation (``None`` where SDPA
    needs none)."""
    from transformers import masking_utils

    build = masking_utils.create_causal_mask
    keyword = next(k for k in (*CACHE_KEYWORDS, None) if k is None or k in _parameters(build))
    if keyword is None:
        raise PruningNotApplied(
            f"create_causal_mask takes its KV cache under none of {', '.join(CACHE_KEYWORDS)}"
        )
    mask = build(
        config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **{keyword: None}
    )
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise PruningNotApplied(
            f"the {config._attn_implementation} attention takes a {type(mask).__name__} mask, "
            "which layer-stage methods cannot rebuild between layers; load the model with "
            "attn_implementation='sdpa' or 'eager'",
            usage=True,
        )
    return mask


@functools.cache
def _parameters(function: Any) -> frozenset:
    return frozenset(inspect.signature(function).parameters)


def keep_cache_rows(cache: Any, layers: range, index: Any) -> None:
    """Keep only the rows ``index`` (``(B, L')`` into the rows they hold) in ``layers`` of
    ``cache``, in place.

    Raises
    ------
    PruningNotApplied
        For a cache without per-layer ``keys`` / ``values`` tensors (static and offloaded caches
        cannot shorten one layer).
    """
    entries = getattr(cache, "layers", None)
    for layer in layers:
        entry = entries[layer] if entries is not None and layer < len(entries) else None
        keys, values = getattr(entry, "keys", None), getattr(entry, "values", None)
        if type(entry).__name__ != "DynamicLayer" or not isinstance(keys, torch.Tensor):
            raise PruningNotApplied(
                f"the KV cache ({type(cache).__name__}) holds layer {layer} as "
                f"{type(entry).__name__}; layer-stage methods shorten the cache of the layers "
                "before the pruning layer and need a DynamicCache (generate's default): leave "
                "out cache_implementation (e.g. 'static') or pass a DynamicCache",
                usage=True,
            )
        heads, width = keys.shape[1], keys.shape[-1]
        rows = index.to(keys.device)[:, None, :, None]
        entry.keys = keys.gather(2, rows.expand(-1, heads, -1, width))
        entry.values = values.gather(2, rows.expand(-1, heads, -1, values.shape[-1]))
