"""What a method may know besides the visual tokens: the :class:`Context`, and the vision-tower
scores a method may require (:data:`VISION_NEEDS`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

from ..functional.scaling import all_power_of_two_scaled, power_of_two_scaled


@dataclass(frozen=True)
class Context:
    """What a method may know besides the visual tokens.

    Parameters
    ----------
    text : Tensor or list of Tensor, optional
        Prompt-token embeddings ``(m, d_t)``: the LLM input embeddings of the prompt tokens after
        the sample's last visual token, without padding (spec "Text"). For a batch ``(b, n, d)``,
        either one ``(m, d_t)`` tensor shared by every item (video frames of one prompt) or a list
        of ``b`` tensors. ``m`` may be 0 (an empty tail).
    query : Tensor, optional
        A ready text query ``(d_q,)`` (shared) or ``(b, d_q)``; used by methods that pool the text
        into one vector (ReDiPrune) instead of ``text``.
    cls_attention : Tensor, optional
        The vision tower's CLS attention to each token at the selected vision layer: ``(H, n)``
        per head (or ``(n,)``) for ``(n, d)`` tokens, ``(b, H, n)`` (or ``(b, n)``) for a batch
        (VisPruner, VisionZip; need ``"cls_attention"``).
    vision_keys : Tensor, optional
        That layer's key projections of the tokens averaged over heads, ``(n, hd)`` or
        ``(b, n, hd)`` (VisionZip; needs ``"vision_keys"``).
    cls_state : Tensor, optional
        That layer's output hidden state of the CLS token, ``(d,)`` or ``(b, d)`` (VisionZip keeps
        it as a token when given).
    image_embeds : Tensor, optional
        Ready CLIP embeddings of the image patches for CDPruner's relevance, ``(n, C)`` or
        ``(b, n, C)``; used with ``text_embeds``.
    text_embeds : Tensor or list of Tensor, optional
        Ready CLIP embeddings of the instruction for CDPruner's relevance, ``(M, C)`` (shared by
        the batch) or a list of ``b`` of them; used with ``image_embeds``.
    scores : Tensor or list of Tensor, optional
        Per-token scores that a layer-stage method (FastV, PyramidDrop, DART) reads from inside
        the language model: ``(n,)`` for ``(n, d)`` tokens, ``(b, n)`` or a list of ``b``
        ``(n,)`` tensors for a batch (the attention each token receives from the last prompt
        token, or each token's key norm).
    text_scores : Tensor or list of Tensor, optional
        The same scores for the ``text`` tokens: ``(m,)`` per item (DART's text pivots).
    """

    text: Tensor | list[Tensor] | None = None
    query: Tensor | None = None
    cls_attention: Tensor | None = None
    vision_keys: Tensor | None = None
    cls_state: Tensor | None = None
    image_embeds: Tensor | None = None
    text_embeds: Tensor | list[Tensor] | None = None
    scores: Tensor | list[Tensor] | None = None
    text_scores: Tensor | list[Tensor] | None = None

    def texts_for(self, batch: int, method: str = "method") -> list[Tensor] | None:
        """Return one text tensor per batch item, or ``None`` when no text was given."""
        if self.text is None:
            return None
        if isinstance(self.text, Tensor):
            return [self.text] * batch
        texts = list(self.text)
        if len(texts) != batch:
            raise ValueError(
                f"{method}: text is a list of {len(texts)} tensors but the batch has {batch} "
                "items; pass one (m, d) tensor per item, or a single tensor shared by all items."
            )
        return texts


#: Vision-tower context a method may require, and what it is (for the error messages).
VISION_NEEDS: dict[str, str] = {
    "cls_attention": (
        "the vision tower's CLS attention to each token at the selected vision layer, (H, n) "
        "or (b, H, n); only towers with a CLS token (CLIP) have it"
    ),
    "vision_keys": (
        "that vision layer's key projections of the tokens averaged over heads, (n, hd) or "
        "(b, n, hd)"
    ),
}


#: Context fields that hold one entry per image (a leading batch dimension for a batch).
PER_ITEM_FIELDS = ("cls_attention", "vision_keys", "cls_state", "image_embeds")


def with_batch_dim(ctx: Context) -> Context:
    """The per-image context of one ``(n, d)`` image with a leading batch dimension of 1."""
    changes = {}
    for name in PER_ITEM_FIELDS:
        value = getattr(ctx, name)
        if isinstance(value, Tensor):
            changes[name] = value.unsqueeze(0)
    return dataclasses.replace(ctx, **changes) if changes else ctx


def scaled_context(ctx: Context) -> Context:
    """``ctx`` with its text and query scaled like the tokens (an exact power of two per text,
    :mod:`visprune.functional.scaling`), so no square overflows or underflows float32."""
    text = ctx.text
    if isinstance(text, Tensor):
        text = power_of_two_scaled(text, dims=(-2, -1))
    elif text is not None:
        text = all_power_of_two_scaled(list(text), dims=(-2, -1))
    query = ctx.query
    if query is not None:
        query = power_of_two_scaled(query, dims=(-1,))
    # The vision-tower context is read as scale-free scores (cosines, ranks), so it passes as is.
    return dataclasses.replace(ctx, text=text, query=query)
