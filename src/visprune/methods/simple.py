"""Baselines: random, uniform (raster downsampling) and keepall (the identity)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import METHODS
from .base import Method
from .budget import Budget, resolve_budget
from .context import Context


@METHODS.register("random")
@dataclass
class Random(Method):
    """Keep ``k`` tokens drawn uniformly without replacement.

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).
    seed : int
        Seed of the ``torch.Generator``; every image draws from a fresh generator with this seed,
        so a result never depends on what else is in the batch.
    """

    seed: int = 0

    name: ClassVar[str] = "random"
    stage: ClassVar[str] = "llm"

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"random: seed must be an int, got {self.seed!r}.")
        if not 0 <= self.seed < 2**64:
            raise ValueError(
                f"random: seed must be in [0, 2**64) (a torch.Generator seed), got {self.seed}."
            )

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        b, n, _ = tokens.shape
        generator = torch.Generator().manual_seed(self.seed)
        drawn = torch.randperm(n, generator=generator)[:k]
        return drawn.to(tokens.device).expand(b, k).clone()


@METHODS.register("uniform")
@dataclass
class Uniform(Method):
    """Keep ``k`` tokens evenly spaced in raster order: ``round(linspace(0, n - 1, k))``.

    The downsampling baseline that benchmark studies found surprisingly strong.

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).
    """

    name: ClassVar[str] = "uniform"
    stage: ClassVar[str] = "llm"

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        b, n, _ = tokens.shape
        return evenly_spaced(n, k).to(tokens.device).expand(b, k).clone()


def evenly_spaced(n: int, k: int) -> Tensor:
    """``round(linspace(0, n - 1, k))`` in exact integer arithmetic, halves to even.

    Spacing ``(n - 1) / (k - 1) >= 1`` for ``k <= n``, so rounding never merges two picks.
    Integers make exact halves (``n = 28, k = 27`` hits 13.5) round the same on every device.
    """
    if k == 1:
        return torch.zeros(1, dtype=torch.long)
    numerator = torch.arange(k, dtype=torch.long) * (n - 1)
    floor, remainder = numerator // (k - 1), numerator % (k - 1)
    twice = 2 * remainder
    up = (twice > k - 1) | ((twice == k - 1) & (floor % 2 == 1))
    return floor + up.long()


@METHODS.register("keepall")
@dataclass
class KeepAll(Method):
    """Keep every token: the identity, for checking that pruning machinery changes nothing."""

    name: ClassVar[str] = "keepall"
    stage: ClassVar[str] = "llm"

    def __post_init__(self) -> None:
        if self.budget is not None:
            raise ValueError(
                f"keepall keeps every token and takes no budget, got budget={self.budget!r}."
            )

    def num_keep(self, n: int, budget: Budget | None = None) -> int:
        if budget is not None:
            resolve_budget(budget, n, self.name)
            raise ValueError(f"keepall keeps every token and takes no budget, got {budget!r}.")
        return n

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        raise ValueError(f"keepall keeps every token; it cannot keep {k} of {tokens.shape[1]}.")
