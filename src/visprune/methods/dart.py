"""DART: pivot tokens by key norm, then keep the visual tokens least duplicated with them.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More" (arXiv 2502.11494). The pure core with the published quirks is
:func:`visprune.functional.dart`; this method keeps exactly ``budget`` tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..functional.dart import claim_least_duplicated, true_positions
from ..functional.rows import top_scores, unit_rows
from ..functional.text import padded_rows
from ..registry import METHODS
from .context import Context
from .layer import LayerMethod, check_layer, padded_scores, scores_batch


@METHODS.register("dart")
@dataclass
class DART(LayerMethod):
    """Pivots with the largest key norm; each keeps the visual tokens least similar to it.

    After layer ``K - 1``: the ``image_pivots`` visual tokens and the ``text_pivots`` prompt
    tokens (after the image) with the largest L1 norm of their keys are pivots. The image pivots
    are kept; then each pivot in turn claims its share of the other visual tokens with the
    lowest cosine similarity ``<h_i, h_p> / (|h_i| |h_p|)`` to it (hidden states after the final
    norm), which leave the pool.

    visprune keeps exactly ``k`` tokens: the ``k - image_pivots`` claimed tokens are shared out
    as evenly as the pivots allow (the first ``(k - p) mod P`` pivots claim one more). The
    published code keeps ``p + P * (k // P)`` (132 for ``k = 128``); the functional core
    reproduces that. Pivots claim in order of their key norm, image pivots first (the published
    code visits them in CPython ``set`` order); ties go to the lowest index. Without text, or
    with fewer prompt tokens than ``text_pivots``, fewer text pivots claim.

    Parameters
    ----------
    budget : int or float
        Visual tokens kept per image from layer ``K`` on (the paper keeps 128 of 576).
    layer : int
        ``K`` (default 2, as published).
    image_pivots, text_pivots : int
        Pivot counts (4 and 4, as published).

    Notes
    -----
    ``select`` reads ``scores`` (the visual tokens' key norms ``(n,)``), ``text`` (the prompt
    tokens' hidden states ``(m, d)``) and ``text_scores`` (their key norms ``(m,)``);
    ``tokens`` are the visual tokens' hidden states.
    """

    layer: int = 2
    image_pivots: int = 4
    text_pivots: int = 4

    name: ClassVar[str] = "dart"
    signal: ClassVar[str] = "keys"
    uses: ClassVar[frozenset[str]] = frozenset({"scores", "text"})
    text_in_token_space: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_layer(self.name, "layer", self.layer)
        check_layer(self.name, "image_pivots", self.image_pivots)
        check_layer(self.name, "text_pivots", self.text_pivots, low=0)

    def prune_layers(self, num_layers: int) -> list[int]:
        return [self.layer]

    def _prepare(self, ctx: Context, tokens: Tensor) -> Context:
        b, n, d = tokens.shape
        texts = ctx.texts_for(b, self.name) or [tokens.new_zeros(0, d)] * b
        lengths = [len(text) for text in texts]
        if self.text_pivots and max(lengths) and ctx.text_scores is None:
            raise ValueError(
                f"{self.name}: text pivots need text_scores=(m,) key norms of the text tokens."
            )
        text_scores = None
        if ctx.text_scores is not None:
            text_scores = padded_scores(ctx.text_scores, lengths, "text_scores", self.name)
            text_scores = text_scores.to(tokens.device)
        scores = scores_batch(ctx.scores, b, n, "scores", self.name).to(tokens.device)
        return dataclasses.replace(ctx, text=texts, scores=scores, text_scores=text_scores)

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        # From _prepare: scores (b, n), text a list of b (m_i, d), text_scores (b, max m_i) with
        # -inf past each item's text (or None without text).
        b, n, d = tokens.shape
        device = tokens.device
        norms, texts, text_norms = ctx.scores, ctx.text, ctx.text_scores
        lengths = [len(text) for text in texts]
        p_img = min(self.image_pivots, k)
        p_txt = min(self.text_pivots, max(lengths))
        image = top_scores(norms, p_img)  # (b, p_img)
        unit = unit_rows(tokens)
        pivots = unit.gather(1, image.unsqueeze(-1).expand(b, p_img, d))
        if p_txt:
            text = padded_rows(texts, device)  # (b, m, d), zero rows past each item's text
            # Padding sorts last: an item with fewer text tokens has fewer text pivots.
            chosen = top_scores(text_norms, p_txt)
            text_pivots = unit_rows(text.gather(1, chosen.unsqueeze(-1).expand(b, p_txt, d)))
            pivots = torch.cat([pivots, text_pivots], dim=1)
        # Each item's shares, from the text lengths the host already knows: k - p_img tokens
        # spread over its pivots, the first (k - p_img) mod P_i pivots claiming one more.
        shares, slots = [], pivots.shape[1]
        for length in lengths:
            count = p_img + min(self.text_pivots, length)
            rest, extra = divmod(k - p_img, count)
            shares.append([rest + (slot < extra) if slot < count else 0 for slot in range(slots)])
        pool = torch.ones(b, n, dtype=torch.bool, device=device).scatter_(1, image, False)
        shares = torch.tensor(shares, device=device)
        claimed = claim_least_duplicated(unit, pool, pivots, shares)
        return true_positions(claimed.scatter_(1, image, True), k)
