"""Row-wise helpers shared by the selection cores: unit rows, one row per batch item, and the
highest scores of each row (FastV's and PyramidDrop's selection, DART's pivots)."""

from __future__ import annotations

import torch
from torch import Tensor


def unit_rows(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; an all-zero row stays zero. ``(..., d) -> (..., d)``."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def batch_rows(matrix: Tensor, index: Tensor) -> Tensor:
    """Return ``matrix[i, index[i], :]`` for every batch item: ``(b, n, m), (b,) -> (b, m)``."""
    return matrix[torch.arange(matrix.shape[0], device=matrix.device), index]


def top_scores(scores: Tensor, k: int) -> Tensor:
    """``(b, n) -> (b, k)`` the ``k`` highest scores' indices; ties go to the lowest index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
