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
(``torch.compile(fullgraph=True)``, CUDA graphs). The rows live in one buffer allocated up
front and are written in place, so a step reads the rows so far once (the product) and copies
none of them (growing them by concatenation would copy ``k² n / 2`` values in all, as many as
the products read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

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
        self._step = 0
        # (k, b, 1, n) storage: each row's slot is contiguous, so the GEMM writes it with out=
        # (torch.compile captures no strided out=), and (b, k, n) is a view of all of them.
        buffer = residual.new_empty(max(k, 1), b, 1, n)
        self._slots = buffer.unbind(0)
        self._all_rows = buffer.view(-1, b, n).permute(1, 0, 2)
        self._scores = residual.view(b, 1, n)
        self._batch = torch.arange(b, device=residual.device).view(b, 1)
        self._excluded = torch.full((), -torch.inf, dtype=residual.dtype, device=residual.device)

    @property
    def rows(self) -> Tensor:
        """``(b, step, n)`` the Cholesky rows ``C`` so far."""
        return self._all_rows[:, : self._step]

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
        slot = self._slots[self._step]
        if self._step == 0:
            e = torch.mul(row, scale, out=slot)
        else:
            # e = K[pick, :] - C[:, pick]ᵀ C: one batched GEMM into the row's slot.
            done = self.rows
            e = torch.baddbmm(row, done[self._batch, :, pick], done, alpha=-1.0, out=slot)
            e.mul_(scale)
        self._step += 1
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
    return pivoted_greedy(state, k, lambda pick, pivot: state.update(pick, rows(pick), pivot))


class PivotState(Protocol):
    """A greedy's state: the best remaining score per item, and the update after a pick."""

    def best(self) -> tuple[Tensor, Tensor]:
        """The best score and its token per item (ties: the lowest index): ``(b, 1)`` each."""
        ...


def pivoted_greedy(
    state: PivotState, k: int, update: Callable[[Tensor, Tensor], None]
) -> tuple[Tensor, Tensor]:
    """``k`` picks of ``state.best()``, calling ``update(pick, pivot)`` between them.

    The loop of every pivoted greedy here (the log-det and residual-energy selections): the
    last pick needs no update, and no step reads the host.

    Parameters
    ----------
    state : PivotState
        Its ``best()`` gives the ``(b, 1)`` score and token of the next pick.
    k : int
        Picks per item.
    update : callable
        ``(pick (b, 1), pivot (b, 1)) -> None``: take the pick into the state.

    Returns
    -------
    picks : Tensor
        ``(b, k)`` int64 picks in pick order.
    pivots : Tensor
        ``(b, k)`` the score of each pick when it was picked.
    """
    picks, pivots = [], []
    for step in range(k):
        pivot, pick = state.best()
        picks.append(pick)
        pivots.append(pivot)
        if step < k - 1:
            update(pick, pivot)
    return torch.cat(picks, dim=-1), torch.cat(pivots, dim=-1)
