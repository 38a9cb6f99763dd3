"""OTPrune: distribution alignment through optimal transport, as a log-det greedy.

"OTPrune: Distribution-Aligned Visual Token Pruning via Optimal Transport", CVPR 2026,
https://arxiv.org/abs/2602.20205
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import METHODS
from .base import Context, Method, check_param
from .cholesky import cholesky_greedy

# Rows of K are computed lazily in blocks of this many tokens: the greedy only ever needs the rows
# of the tokens it picks, and a block GEMM runs near peak speed where one row at a time (GEMV) is
# memory-bound. Block rows are bit-identical to the full product, whatever the block holds.
_ROW_BLOCK = 64

#: Devices where K's rows are formed lazily. Knowing whether a pick's row is cached is a host
#: read, which on a GPU stalls the stream once per pick; there K is formed up front instead (one
#: batched GEMM, microseconds for n = 576). On a CPU the read is free and the lazy rows save most
#: of the n³ product. Both give the same picks.
LAZY_ROW_DEVICES = frozenset({"cpu"})


def column_normalise(tokens: Tensor) -> Tensor:
    """Scale each feature column to unit L2 norm over the tokens; zero columns stay zero.

    ``(b, n, d) -> (b, n, d)``: ``X̃[:, c] = X[:, c] / ‖X[:, c]‖``.
    """
    # A sum of squares over the token axis is several times faster than ``norm(dim=-2)``, whose
    # reduction runs across the memory layout.
    norms = (tokens * tokens).sum(dim=-2, keepdim=True).sqrt_()
    return tokens / norms.clamp_min(torch.finfo(tokens.dtype).tiny)


class _KernelRows:
    """Lazily computed rows of ``K = I + γ S Sᵀ`` (``S`` symmetric), cached per batch item."""

    def __init__(self, similarity: Tensor, gamma: float) -> None:
        self.similarity = similarity
        self.gamma = gamma
        b, n, _ = similarity.shape
        self.rows = torch.empty_like(similarity)
        self.cached = torch.zeros(b, n, dtype=torch.bool, device=similarity.device)
        self.block = min(n, _ROW_BLOCK)
        self.batch = torch.arange(b, device=similarity.device).view(b, 1)

    def row(self, pick: Tensor, priority: Tensor) -> Tensor:
        """``K[i, pick[i], :]`` for every item ``i``: ``(b, 1) -> (b, 1, n)``.

        On a cache miss, computes the rows of the ``block`` uncached tokens with the highest
        ``priority`` (``(b, n)``, the current greedy gains), which are the likeliest next picks.
        """
        batch = self.batch
        if not bool(self.cached[batch, pick].all()):
            order = priority.masked_fill(self.cached, -torch.inf)
            order[batch, pick] = torch.inf
            wanted = order.topk(self.block, dim=-1).indices
            n = self.similarity.shape[-1]
            pivots = self.similarity.gather(1, wanted.unsqueeze(-1).expand(-1, -1, n))
            block = torch.bmm(pivots, self.similarity).mul_(self.gamma)
            block.scatter_add_(2, wanted.unsqueeze(-1), torch.ones_like(block[..., :1]))
            self.rows.scatter_(1, wanted.unsqueeze(-1).expand(-1, -1, n), block)
            self.cached.scatter_(1, wanted, True)
        return self.rows[batch, pick]


class _KernelMatrix:
    """``K = I + γ S Sᵀ`` formed up front, with the arithmetic of :class:`_KernelRows`."""

    def __init__(self, similarity: Tensor, gamma: float) -> None:
        self.kernel = torch.bmm(similarity, similarity).mul_(gamma)
        self.kernel.diagonal(dim1=-2, dim2=-1).add_(1.0)
        self.batch = torch.arange(similarity.shape[0], device=similarity.device).view(-1, 1)

    def row(self, pick: Tensor, priority: Tensor) -> Tensor:
        """``K[i, pick[i], :]`` for every item ``i``: ``(b, 1) -> (b, 1, n)``."""
        return self.kernel[self.batch, pick]


def logdet_greedy(
    similarity: Tensor, gamma: float, k: int, *, lazy_rows: bool | None = None
) -> Tensor:
    """Greedy MAP of ``log det K_A`` with ``K = I + γ S Sᵀ`` (Chen et al., NeurIPS 2018).

    Incremental Cholesky: for a pick ``j``, ``e = (K[j, :] - C[:, j]ᵀ C) / sqrt(d²_j)`` becomes a
    new row of ``C`` and ``d² -= e²``; the next pick is ``argmax d²`` over unselected tokens.

    Parameters
    ----------
    similarity : Tensor
        ``(b, n, n)`` symmetric ``S``.
    gamma : float
        Kernel scale ``γ``.
    k : int
        Picks per item.
    lazy_rows : bool, optional
        Form only the rows of ``K`` the greedy needs (one host read per pick) instead of all of
        ``K`` up front (no host read). Default: lazy on :data:`LAZY_ROW_DEVICES`, except
        under ``torch.compile``.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 picks in pick order.
    """
    if lazy_rows is None:
        # A compiled graph cannot hold the lazy rows' host read: it forms K up front.
        compiling = torch.compiler.is_compiling()
        lazy_rows = similarity.device.type in LAZY_ROW_DEVICES and not compiling
    # diag(K)_i = 1 + γ ‖S_i‖²: no need to form K.
    gains = torch.linalg.vector_norm(similarity, dim=-1).square_().mul_(gamma).add_(1.0)
    kernel = (_KernelRows if lazy_rows else _KernelMatrix)(similarity, gamma)
    picks, _ = cholesky_greedy(lambda pick: kernel.row(pick, gains), gains, k)
    return picks


@METHODS.register("otprune")
@dataclass
class OTPrune(Method):
    """Optimal-transport alignment relaxed to a monotone submodular log-det objective.

    ``max_{|A| = k} log det(I + γ S Sᵀ)_A`` with ``S = X̃ X̃ᵀ`` on column-normalised tokens,
    maximised greedily (fast greedy MAP inference, Chen et al. 2018).

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).
    gamma : float
        Kernel scale ``γ`` (paper: 0.01).

    Notes
    -----
    Runs on the LLM input embeddings (after the projector). Deliberate differences from the
    published code: the greedy runs in float32 (the published code keeps the Cholesky rows in
    fp16, which changes a few picks), the result is sorted (the published code returns Python set
    order), and on a CPU the ``n x n x n`` product is never formed: only the pivot rows of ``K``
    are computed (on a GPU ``K`` is one batched GEMM, and knowing which rows are cached would
    cost a host sync per pick). Paper: https://arxiv.org/abs/2602.20205
    """

    gamma: float = 0.01

    name: ClassVar[str] = "otprune"
    stage: ClassVar[str] = "llm"

    def __post_init__(self) -> None:
        check_param(self.name, "gamma", self.gamma, low=0.0, strict=True)

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        normalised = column_normalise(tokens)
        similarity = normalised @ normalised.mT
        return logdet_greedy(similarity, self.gamma, k)
