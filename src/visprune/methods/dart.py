"""DART: pivot tokens by key norm, then keep the visual tokens least duplicated with them.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More" (arXiv 2502.11494). The pure core with the published quirks is
:func:`visprune.functional.dart`; this method keeps exactly ``budget`` tokens
(:func:`visprune.functional.dart.dart_exact`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..functional.dart import dart_exact
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
    image_pivots : int
        Pivots taken among the image tokens (4, as published).
    text_pivots : int
        Pivots taken among the text tokens (4, as published).

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
        return dart_exact(
            tokens, k, ctx.scores, ctx.text, ctx.text_scores, self.image_pivots, self.text_pivots
        )
