"""DART: pivot tokens by key norm, then keep the visual tokens least duplicated with them.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More" (arXiv 2502.11494). The pure core with the published quirks is
:func:`visprune.functional.dart`; this method keeps exactly ``budget`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..functional.dart import least_duplicated
from ..registry import METHODS
from .base import Context, unit_rows
from .layer import LayerMethod, check_layer, scores_per_item, top_scores


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

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        b, n, _ = tokens.shape
        norms = scores_per_item(ctx.scores, b, n, "scores", self.name)
        texts = ctx.texts_for(b, self.name) or [tokens.new_zeros(0, tokens.shape[-1])] * b
        text_norms = [torch.zeros(0)] * b
        if ctx.text_scores is not None:
            lengths = {len(text) for text in texts}
            m = lengths.pop() if len(lengths) == 1 else None
            if m is None:  # texts of different lengths: one score tensor per item
                text_norms = [
                    scores_per_item([s], 1, len(t), "text_scores", self.name)[0]
                    for s, t in zip(ctx.text_scores, texts, strict=True)
                ]
            else:
                text_norms = scores_per_item(ctx.text_scores, b, m, "text_scores", self.name)
        elif any(len(text) for text in texts) and self.text_pivots:
            raise ValueError(
                f"{self.name}: text pivots need text_scores=(m,) key norms of the text tokens."
            )
        rows = []
        for item in range(b):
            text = texts[item].float().to(tokens.device)
            unit = unit_rows(torch.cat([tokens[item], text]))
            p_img = min(self.image_pivots, k)
            image = top_scores(norms[item].to(tokens.device)[None], p_img)[0]
            p_txt = min(self.text_pivots, len(text))
            pivots = image.tolist()
            if p_txt:
                pivots += (
                    top_scores(text_norms[item].to(tokens.device)[None], p_txt)[0] + n
                ).tolist()
            pool = torch.zeros(len(unit), dtype=torch.bool, device=tokens.device)
            pool[:n] = True
            pool[image] = False
            rest, count = divmod(k - p_img, len(pivots))
            shares = [rest + (slot < count) for slot in range(len(pivots))]
            claimed = least_duplicated(unit, pool, pivots, shares, stable=True)
            rows.append(torch.cat([image, *claimed]))
        return torch.stack(rows)
