"""CDPruner: a conditional DPP over the projected tokens, weighted by instruction relevance.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
Pruning in MLLMs" (CDPruner, arXiv 2506.10967).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..functional.cdpruner import conditional_dpp, instruction_relevance
from ..registry import METHODS
from .base import Method
from .checks import check_all_finite, per_item
from .context import Context


@METHODS.register("cdpruner")
@dataclass
class CDPruner(Method):
    """Greedy MAP of the conditional DPP kernel ``L = diag(r) S diag(r)`` on projected tokens.

    ``S_ij = cos(x_i, x_j)`` on the tokens; ``r_i = -mean_m cos(e_i, t_m)`` (the published
    sign), min-max rescaled per image: ``r = (r - min + 1e-6) / (max - min)``.

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image or video frame (count, or fraction in (0, 1]).

    Notes
    -----
    Stage "llm": runs on the projected tokens (the LLM input embeddings). Relevance compares
    ``e`` and ``t`` from one space. The published code uses CLIP image embeddings of the patches
    and CLIP text embeddings of the instruction; pass them as ``image_embeds`` ``(n, C)`` and
    ``text_embeds`` ``(M, C)`` to :func:`visprune.select`. Inside a model (``visprune.apply``)
    there is no CLIP text tower, so ``e`` are the projected tokens themselves and ``t`` the LLM
    input embeddings of the prompt after the image (``text``), as for visprune's other
    text-conditioned methods. Deliberate differences: the min-max runs per image (published: over
    the whole batch tensor, which is the same for its batch of one), so a batch gives the
    per-image results; a prompt without text after the image, or an image whose relevance is
    constant, gets ``r = 1`` (pure similarity DPP) where the published code divides by zero; a
    picked token is never picked again once the kernel's rank is exhausted
    (:func:`visprune.functional.cdpruner`). Paper: https://arxiv.org/abs/2506.10967
    """

    name: ClassVar[str] = "cdpruner"
    stage: ClassVar[str] = "llm"
    requires: ClassVar[frozenset[str]] = frozenset({"text"})
    uses: ClassVar[frozenset[str]] = frozenset({"text"})
    text_in_token_space: ClassVar[bool] = True

    def _check_context(self, ctx: Context, batch: int, width: int) -> None:
        clip = ctx.image_embeds is not None, ctx.text_embeds is not None
        if any(clip) and not all(clip):
            raise ValueError(
                f"{self.name}: pass image_embeds and text_embeds together (CLIP embeddings of "
                "the patches and of the instruction), or neither (then text= is the prompt)."
            )
        if all(clip):
            return  # the CLIP pair replaces text; checked where it is read
        super()._check_context(ctx, batch, width)

    def relevance(self, tokens: Tensor, ctx: Context, norms: Tensor | None = None) -> Tensor:
        """``(b, n)`` float32 relevance weights ``r`` per image, in ``(0, 1]``
        (:func:`~visprune.functional.cdpruner.instruction_relevance`).

        ``norms`` ``(b, n)``: the tokens' L2 norms where the caller has them already (the
        square root of their Gram's diagonal); used when the relevance compares the tokens
        themselves, which saves one pass over the ``n x d`` tokens.
        """
        b, n, _ = tokens.shape
        if ctx.image_embeds is not None:
            embeds = per_item(ctx.image_embeds, b, (3,), "image_embeds", self.name)
            if embeds.shape[1] != n:
                raise ValueError(
                    f"{self.name}: image_embeds has {embeds.shape[1]} tokens per image, the "
                    f"tokens have {n}."
                )
            embeds = embeds.to(tokens.device)
            texts = self._clip_texts(ctx, b, embeds.shape[-1])
            norms = None
        else:
            embeds = tokens
            texts = ctx.texts_for(b, self.name)
        return instruction_relevance(embeds, texts, norms)

    def _clip_texts(self, ctx: Context, batch: int, width: int) -> list[Tensor]:
        given = ctx.text_embeds
        texts = [given] * batch if isinstance(given, Tensor) else list(given)
        if len(texts) != batch:
            raise ValueError(
                f"{self.name}: text_embeds is a list of {len(texts)} tensors for {batch} images."
            )
        for text in texts:
            if not isinstance(text, Tensor) or text.dim() != 2 or text.shape[-1] != width:
                raise ValueError(
                    f"{self.name}: text_embeds must be (M, {width}) float tensors (CLIP text "
                    f"embeddings of the width of image_embeds), got "
                    f"{getattr(text, 'shape', type(text))}."
                )
        # Left in their dtype: the check sums in float32, and unit_means packs them into one
        # float32 tensor, so no op runs per text.
        check_all_finite(
            list({id(text): text for text in texts}.values()), "text_embeds", self.name
        )
        return texts

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        # r_i cos(x_i, x_j) r_j = w_i (x_i · x_j) w_j with w = r / ‖x‖: one Gram of the raw
        # tokens, scaled in place by n² products, instead of normalising n x d tokens first.
        # Its diagonal gives the norms, for the similarity and the relevance alike.
        gram = tokens @ tokens.mT
        norms = gram.diagonal(dim1=-2, dim2=-1).sqrt()
        inverse = torch.where(norms > 0, 1 / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
        weights = self.relevance(tokens, ctx, norms) * inverse
        return conditional_dpp(gram, weights, k, in_place=True)
