"""ReDiPrune: text relevance plus max-min diversity, before the projector.

"ReDiPrune: Relevance-Diversity Pre-Projection Token Pruning", https://arxiv.org/abs/2603.24680
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..functional.rediprune import ALPHA, TAU, match_query_width, pool_text_queries, rediprune
from ..registry import METHODS
from .base import Method
from .checks import check_finite, check_param
from .context import Context


@METHODS.register("rediprune")
@dataclass
class ReDiPrune(Method):
    """Relevance to the prompt plus max-min diversity, on pre-projector vision features.

    First pick ``argmax rel``; then ``argmax_{i ∉ S} (min_{s ∈ S} (1 - v̂_s · v̂_i) + α rel_i)``
    with ``rel_i = cos(v_i, q)`` and ``q`` the pooled prompt query
    (:func:`~visprune.functional.rediprune.pool_text_queries`).

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image or video frame (count, or fraction in (0, 1]).
    alpha : float
        Weight of relevance against diversity (paper: 0.5). ``alpha = 0`` is pure diversity after
        the relevance-based first pick (the published code switches pruning off instead).
    tau : float
        Relevance threshold; ``tau <= 0`` makes every token a candidate. Otherwise, when
        ``k < n // 2``, the candidates are the top ``max(3k, k + 1)`` tokens by relevance, else
        the tokens with ``rel >= tau`` (the top ``k`` if fewer pass).

    Notes
    -----
    Stage "vision": runs on the vision features before the projector. Needs the prompt:
    ``text`` (``(m, D)`` LLM embeddings of the tokens after the image; an empty tail gives a zero
    query, hence zero relevance) or a ready ``query``. A query of another width is matched to the
    vision width parameter-free
    (:func:`~visprune.functional.rediprune.match_query_width`); the core is
    :func:`visprune.functional.rediprune`. Paper:
    https://arxiv.org/abs/2603.24680
    """

    alpha: float = ALPHA
    tau: float = TAU

    name: ClassVar[str] = "rediprune"
    stage: ClassVar[str] = "vision"
    requires: ClassVar[frozenset[str]] = frozenset({"text"})
    uses: ClassVar[frozenset[str]] = frozenset({"text", "query"})

    def __post_init__(self) -> None:
        check_param(self.name, "alpha", self.alpha, low=0.0)
        check_param(self.name, "tau", self.tau)

    def queries(self, ctx: Context, batch: int, width: int) -> Tensor:
        """The per-item query matched to the vision width: ``(b, Cv)`` float32."""
        if ctx.query is not None:
            query = ctx.query.float().expand(batch, -1) if ctx.query.dim() == 1 else ctx.query
        else:
            texts = ctx.texts_for(batch, self.name)
            assert texts is not None  # guaranteed by Method._check_context
            query = pool_text_queries(texts)
        query = match_query_width(query.float(), width)
        # Pooling and width matching can overflow float32 on extreme (finite) embeddings.
        check_finite(query, "pooled text query", self.name)
        return query

    def _prepare(self, ctx: Context, tokens: Tensor) -> Context:
        b, _, d = tokens.shape
        return dataclasses.replace(ctx, query=self.queries(ctx, b, d).to(tokens.device))

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        # ctx.query: (b, d) float32, from _prepare.
        return rediprune(tokens, ctx.query, k, self.alpha, self.tau, sort=False)
