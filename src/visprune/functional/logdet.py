"""Greedy MAP of ``log det K_A`` for ``K = I + γ S Sᵀ``: OTPrune's selection step.

The greedy needs only the rows of ``K`` it picks. On a CPU they are formed lazily in blocks (most
of the ``n x n x n`` product is never computed); on a GPU ``K`` is formed up front, because
knowing whether a row is cached is a host read per pick.

"OTPrune: Distribution-Aligned Visual Token Pruning via Optimal Transport", CVPR 2026,
https://arxiv.org/abs/2602.20205; the greedy: Chen et al., "Fast Greedy MAP Inference for
Determinantal Point Process to Improve Recommendation Diversity", NeurIPS 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
