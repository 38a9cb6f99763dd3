"""Attention masks that a base model builds from per-token types before its language model,
rebuilt for the shortened sequence.

Gemma 3's base model turns ``token_type_ids`` into one 4-D mask per layer type (full and
sliding-window attention) in which the image tokens of one image attend to each other both ways
and text stays causal, and hands the dict to its language model. The language model would use
that dict as given, so a shortened sequence needs new masks. They are not a sub-matrix of the
unpruned ones (the sliding window counts cache slots, and the pruned sequence has fewer), so
visprune does not cut them: it shortens the token types like every other per-token input and
builds the masks again with the model's own function (:func:`compat.build_attention_masks`),
which gives exactly the masks the unpatched model builds for the shortened prompt.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .. import compat


def shorten_token_types(token_types: Tensor, index: Tensor) -> Tensor:
    """The token types of the kept positions ``(B, L')``; re-padding slots are text (0).

    Parameters
    ----------
    token_types : Tensor
        ``(B, L)`` the unpruned prompt's token types.
    index : Tensor
        ``(B, L')`` positions into the unpruned sequence, -1 for re-padding.
    """
    index = index.to(token_types.device)
    return token_types.gather(1, index.clamp_min(0)).masked_fill(index < 0, 0)


def rebuild(model: Any, kwargs: dict, token_types: Tensor | None, keep: Tensor, index: Tensor):
    """Replace ``kwargs["attention_mask"]`` with the masks for the shortened sequence, in place.

    Parameters
    ----------
    model : PreTrainedModel
        The ``...ForConditionalGeneration`` whose class builds the masks.
    kwargs : dict
        The language model's keyword arguments after :func:`sequence.shorten`: shortened
        ``inputs_embeds`` ``(B, L', d)``, ``position_ids`` and a 2-D ``attention_mask``.
    token_types : Tensor or None
        ``(B, L)`` the ``token_type_ids`` of the unpruned prompt; ``None`` when the call passed
        none (the model then builds plain causal masks, and so does this).
    keep : Tensor
        ``(B, L)`` bool, the kept positions.
    index : Tensor
        ``(B, L')`` their indices (-1 for re-padding).

    Raises
    ------
    ValueError
        When the token types do not cover the prompt.
    """
    mask = kwargs.get("attention_mask")
    if not (isinstance(mask, Tensor) and mask.dim() == 2):
        raise ValueError(
            "visprune rebuilds the attention masks of the shortened sequence from a 2-D "
            f"padding mask, and got {type(mask).__name__}."
        )
    short = None
    if token_types is not None:
        if tuple(token_types.shape) != tuple(keep.shape):
            raise ValueError(
                f"token_type_ids of shape {tuple(token_types.shape)} do not match the prompt of "
                f"shape {tuple(keep.shape)}; pass the processor's token_type_ids with its "
                "input_ids."
            )
        short = shorten_token_types(token_types, index)
    kwargs["attention_mask"] = compat.build_attention_masks(
        model,
        inputs_embeds=kwargs["inputs_embeds"],
        attention_mask=mask,
        cache=compat.find_cache(kwargs),
        position_ids=kwargs.get("position_ids"),
        token_type_ids=short,
    )
