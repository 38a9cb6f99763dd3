"""The contract of methods that prune inside the language model (``stage = "layer"``).

A layer-stage method prunes during prefill, after decoder layer ``K``: layers ``< K`` run on the
full sequence, layers ``>= K`` on the kept rows only. What it reads there (the attention one
prompt token pays to each visual token, or each token's key norm) is measured by the adapter
from the model's own tensors and handed to :meth:`Method.select` as ``Context.scores``; the
selection itself stays a pure function of tensors, like every other method's.

``visprune.select("fastv", tokens, budget, scores=...)`` runs that selection without a model:
``scores`` are required, since without a language model there is nothing to measure them on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import Method
from .checks import check_all_finite
from .context import Context


def positions_for(method: Method | type[Method], positions: str | None) -> str | None:
    """The position mode ``method`` runs with when ``positions`` is asked for.

    A method that prunes inside the language model keeps the original positions, the only mode
    it has (the layers before ``K`` already rotated the full sequence); every other method runs
    with ``positions`` as given (None: the model family's default).
    """
    return "original" if method.stage == "layer" else positions


def check_layer(method: str, name: str, value: object, low: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{method}: {name} must be an int >= {low}, got {value!r}.")


def scores_per_item(scores: object, batch: int, n: int, what: str, method: str) -> list[Tensor]:
    """``scores`` as ``batch`` float32 tensors of ``(n,)`` each, validated.

    ``scores`` is ``(n,)`` (shared), ``(batch, n)``, or a list of ``batch`` ``(n,)`` tensors.
    """
    if isinstance(scores, Tensor):
        rows = [scores] * batch if scores.dim() == 1 else list(scores)
    else:
        rows = list(scores)
    if len(rows) != batch:
        raise ValueError(f"{method}: {what} have {len(rows)} rows but the batch has {batch} items.")
    out = []
    for row in rows:
        if not isinstance(row, Tensor) or row.dim() != 1 or row.shape[0] != n:
            raise ValueError(
                f"{method}: each row of {what} must be a tensor of shape ({n},), one score per "
                f"token, got {getattr(row, 'shape', type(row))}."
            )
        out.append(row.float())
    check_all_finite([scores.float()] if isinstance(scores, Tensor) else out, what, method)
    return out


def scores_batch(scores: object, batch: int, n: int, what: str, method: str) -> Tensor:
    """``scores`` as one ``(batch, n)`` float32 tensor, validated with one host read.

    ``scores`` is ``(n,)`` (shared), ``(batch, n)``, or a list of ``batch`` ``(n,)`` tensors.
    """
    if isinstance(scores, Tensor) and scores.dim() == 2:
        if scores.shape[0] != batch:
            raise ValueError(
                f"{method}: {what} have {scores.shape[0]} rows but the batch has {batch} items."
            )
        rows = [scores[0]] if batch else []
    elif isinstance(scores, Tensor):
        rows = [scores]
    else:
        rows = list(scores)
        if len(rows) != batch:
            raise ValueError(
                f"{method}: {what} have {len(rows)} rows but the batch has {batch} items."
            )
    for row in rows:
        if not isinstance(row, Tensor) or row.dim() != 1 or row.shape[0] != n:
            raise ValueError(
                f"{method}: each row of {what} must be a tensor of shape ({n},), one score per "
                f"token, got {getattr(row, 'shape', type(row))}."
            )
    if isinstance(scores, Tensor):
        stacked = scores.float().expand(batch, n)
    else:
        stacked = torch.stack([row.float() for row in rows])
    check_all_finite([stacked], what, method)
    return stacked


def padded_scores(scores: object, lengths: list[int], what: str, method: str) -> Tensor:
    """Per-item scores of ``lengths[i]`` tokens each as ``(b, max(lengths))`` float32, ``-inf``
    past each item's own length (so a descending sort puts the padding last).

    ``scores`` is one ``(m,)`` tensor shared by items of ``m`` tokens each, ``(b, m)``, or a list
    of ``b`` tensors of ``(lengths[i],)``. Validated with one host read; the ops do not grow
    with the items.
    """
    batch, longest = len(lengths), max(lengths, default=0)
    if isinstance(scores, Tensor) or len(set(lengths)) == 1:
        if isinstance(scores, Tensor) and scores.dim() == 2 and scores.shape[-1] != longest:
            raise ValueError(
                f"{method}: each row of {what} must be a tensor of shape ({longest},), one score "
                f"per token, got {tuple(scores.shape[1:])}."
            )
        return scores_batch(scores, batch, longest, what, method)
    rows = list(scores)
    if len(rows) != batch:
        raise ValueError(f"{method}: {what} have {len(rows)} rows but the batch has {batch} items.")
    for row, length in zip(rows, lengths, strict=True):
        if not isinstance(row, Tensor) or row.dim() != 1 or row.shape[0] != length:
            raise ValueError(
                f"{method}: each row of {what} must be a tensor of shape ({length},), one score "
                f"per token, got {getattr(row, 'shape', type(row))}."
            )
    packed = torch.cat(rows).float()
    check_all_finite([packed], what, method)
    where = [item * longest + at for item, length in enumerate(lengths) for at in range(length)]
    padded = packed.new_full((batch * longest,), -torch.inf)
    padded.index_copy_(0, torch.tensor(where, device=packed.device), packed)
    return padded.view(batch, longest)


@dataclass
class LayerMethod(Method):
    """Base class of the methods that prune inside the language model.

    Subclasses say after which layers they prune (:meth:`prune_layers`), how many of an image's
    ``n`` tokens each of those prunings keeps (:meth:`keep_count`), and what they read there
    (:attr:`signal` at :meth:`signal_layer`).
    """

    name: ClassVar[str] = "layer"
    stage: ClassVar[str] = "layer"
    requires: ClassVar[frozenset[str]] = frozenset({"scores"})
    uses: ClassVar[frozenset[str]] = frozenset({"scores"})
    #: What the adapter measures: "attention" (the attention the last prompt token pays to each
    #: token, averaged over heads) or "keys" (each token's L1 key norm, plus the hidden states
    #: after the final norm).
    signal: ClassVar[str] = "attention"
    #: The signal of a pruning from layer ``K`` on comes from layer ``K + signal_offset``.
    signal_offset: ClassVar[int] = -1

    def prune_layers(self, num_layers: int) -> list[int]:
        """The layers ``K`` (ascending) before which the sequence is shortened."""
        raise NotImplementedError

    def signal_layer(self, layer: int) -> int:
        """The decoder layer whose queries and keys give the signal for pruning at ``layer``."""
        return layer + self.signal_offset

    def keep_count(self, n: int, step: int) -> int:
        """Tokens of an image's ``n`` candidates kept after pruning number ``step`` (from 0)."""
        return self.num_keep(n)

    def check_layers(self, num_layers: int) -> list[int]:
        """:meth:`prune_layers` for a language model of ``num_layers`` layers, validated.

        Raises
        ------
        ValueError
            When a pruning layer does not leave at least one layer on each side of it, or the
            layers are not strictly ascending.
        """
        layers = self.prune_layers(num_layers)
        if not layers or any(not 1 <= layer < num_layers for layer in layers):
            raise ValueError(
                f"{self.name} prunes after layer(s) {layers}, but the language model has "
                f"{num_layers} decoder layers: each must lie in [1, {num_layers - 1}]."
            )
        if any(b <= a for a, b in itertools.pairwise(layers)):
            raise ValueError(f"{self.name}: pruning layers must be strictly ascending: {layers}.")
        return layers

    def _check_context(self, ctx: Context, batch: int, width: int) -> None:
        super()._check_context(ctx, batch, width)
        if ctx.scores is None:
            raise ValueError(
                f"{self.name} prunes inside the language model and reads per-token scores "
                "there; visprune.apply(model, ...) measures them. Without a model, pass "
                "scores=(n,) or (b, n) tensors (the attention each token receives, or its key "
                "norm)."
            )
