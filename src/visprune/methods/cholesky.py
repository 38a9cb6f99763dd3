"""The pivoted partial Cholesky behind the greedy log-det and residual-energy selections.

Greedy MAP inference of a determinantal objective (Chen et al., "Fast Greedy MAP Inference for
Determinantal Point Process to Improve Recommendation Diversity", NeurIPS 2018) keeps, for a
kernel ``K``, the Cholesky rows ``C`` of the picks and the residual diagonal
``d²_i = K_ii - Σ_t C_ti²``. Each pick ``j = argmax d²`` adds the row
``e = (K[j, :] - C[:, j]ᵀ C) / sqrt(d²_j)`` and subtracts ``e²`` from ``d²``.

On a GPU every dispatched op is a kernel launch, so a step here is a handful of ops on the whole
batch: one index for the pivot's kernel row, one for its Cholesky coefficients, one ``baddbmm``
for the new row, and no host read. The shapes of a step depend only on
``(b, n, k)`` and the step number, so the loop unrolls into one static graph
(``torch.compile(fullgraph=True)``, CUDA graphs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``(b, 1)`` picks -> ``(b, 1, n)`` their kernel rows ``K[i, pick[i], :]``.
KernelRows = Callable[[Tensor], Tensor]


class PivotedCholesky:
    """A batched partial Cholesky of ``k`` rows, updated in place one pivot at a time.

    Parameters
    ----------
    residual : Tensor
        ``(b, n)`` the kernel's diagonal ``d²``; reduced in place (picked tokens become
        ``-inf``), and exposed as :attr:`scores`.
    k : int
        Rows it will hold (the picks of the greedy).
    floor : float, optional
        Pivots ``d²`` below ``floor`` are divided as ``floor`` (a guard against a zero pivot).

    Attributes
    ----------
    scores : Tensor
        ``(b, n)`` the current ``d²``; ``-inf`` for picked tokens.
    rows : Tensor
        ``(b, step, n)`` the Cholesky rows ``C`` so far.
    """

    def __init__(self, residual: Tensor, k: int, floor: float | None = None) -> None:
        b, n = residual.shape
        self.scores = residual
        self.floor = floor
        self._done: Tensor | None = None
        self._scores = residual.view(b, 1, n)
        self._batch = torch.arange(b, device=residual.device).view(b, 1)
        self._excluded = torch.full((), -torch.inf, dtype=residual.dtype, device=residual.device)

    @property
    def rows(self) -> Tensor:
        """``(b, step, n)`` the Cholesky rows ``C`` so far."""
        b, n = self.scores.shape
        return self.scores.new_zeros(b, 0, n) if self._done is None else self._done

    def best(self) -> tuple[Tensor, Tensor]:
        """The largest ``d²`` and its token per item (ties: the lowest index): ``(b, 1)`` each."""
        return self.scores.max(dim=-1, keepdim=True)

    def update(self, pick: Tensor, row: Tensor, pivot: Tensor) -> None:
        """Add the row of ``pick`` and exclude it from later picks.

        Parameters
        ----------
        pick : Tensor
            ``(b, 1)`` int64 pivot per item.
        row : Tensor
            ``(b, 1, n)`` the pivot's kernel row ``K[pick, :]``.
        pivot : Tensor
            ``(b, 1)`` its ``d²`` (a value of :meth:`best`).
        """
        b = pick.shape[0]
        pivot = pivot if self.floor is None else pivot.clamp_min(self.floor)
        scale = pivot.rsqrt().view(b, 1, 1)
        done = self._done
        if done is None:
            e = row * scale
            self._done = e
        else:
            # e = K[pick, :] - C[:, pick]ᵀ C: one batched GEMM. The new row is concatenated, not
            # written into a preallocated buffer: torch.compile captures no strided `out=`.
            e = torch.baddbmm(row, done[self._batch, :, pick], done, alpha=-1.0).mul_(scale)
            self._done = torch.cat([done, e], dim=1)
        self._scores.addcmul_(e, e, value=-1.0)
        self.scores.index_put_((self._batch, pick), self._excluded)


def cholesky_greedy(
    rows: KernelRows, residual: Tensor, k: int, floor: float | None = None
) -> tuple[Tensor, Tensor]:
    """``k`` greedy picks of ``argmax d²``, incremental Cholesky (:class:`PivotedCholesky`).

    Parameters
    ----------
    rows : callable
        ``(b, 1)`` picks -> ``(b, 1, n)`` their kernel rows.
    residual : Tensor
        ``(b, n)`` the kernel's diagonal; reduced in place.
    k : int
        Picks per item.
    floor : float, optional
        See :class:`PivotedCholesky`.

    Returns
    -------
    picks : Tensor
        ``(b, k)`` int64 picks in pick order.
    pivots : Tensor
        ``(b, k)`` the ``d²`` of each pick when it was picked.
    """
    state = PivotedCholesky(residual, k, floor)
    picks, pivots = [], []
    for step in range(k):
        pivot, pick = state.best()
        picks.append(pick)
        pivots.append(pivot)
        if step < k - 1:
            state.update(pick, rows(pick), pivot)
    return torch.cat(picks, dim=-1), torch.cat(pivots, dim=-1)
