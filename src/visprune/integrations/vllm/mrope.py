"""M-RoPE positions of pruned Qwen-VL prompts, as ``visprune.apply`` gives them in transformers.

There (``positions="original"``, the Qwen families' only mode) the model computes the (t, h, w)
positions of the full prompt and the kept tokens keep theirs: every text token sits where it
sat unpruned, each kept visual token at its grid cell, and decoding continues one past the
unpruned prompt's largest position. vLLM computes a request's positions before its images are
encoded, from the prompt that holds only the kept placeholders; which cells are kept is known
after encoding. So positions are made in two steps, as vLLM's own video pruning (EVS) does:

1. :func:`prompt_positions` (at request start): text tokens at their unpruned positions, each
   kept placeholder at the start position of its media run (where its grid begins), the text
   after a run where transformers puts it (:meth:`Run.advance`);
2. the model appends each kept token's grid offset to its embedding (:func:`encode_offsets`),
   and adds it to the placeholder's position in the forward pass that consumes it
   (:func:`decode_offsets`).

A media run is one contiguous stretch of placeholder tokens with one grid origin: an image, a
Qwen2.5-VL video (all its temporal patch groups), or one Qwen3-VL video frame (frames are
separated by timestamp text there). Imports no vLLM code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: Offsets travel in the embedding's dtype as base-256 digits (exact in bfloat16 and float16).
_DIGIT = 256
_DIGITS = 2
#: Columns appended to each kept embedding row: (t, h, w) offsets, ``_DIGITS`` columns each.
OFFSET_COLUMNS = 3 * _DIGITS


@dataclass(frozen=True)
class Run:
    """One media run of an image or video before pruning.

    Attributes
    ----------
    frames : int
        Selection problems in the run (temporal patch groups; 1 for an image and for a Qwen3-VL
        video frame). The budget applies to each.
    height : int
        Rows of the merged token grid of each frame.
    width : int
        Columns of the merged token grid of each frame.
    t_step : float
        Temporal position step between frames (Qwen2.5-VL: seconds per group times tokens per
        second; 1 elsewhere).
    """

    frames: int
    height: int
    width: int
    t_step: float = 1.0

    @property
    def per_frame(self) -> int:
        return self.height * self.width

    @property
    def candidates(self) -> int:
        return self.frames * self.per_frame

    def kept(self, num_keep: Callable[[int], int]) -> int:
        """Kept tokens of the run when each frame keeps ``num_keep(per_frame)``."""
        return self.frames * num_keep(self.per_frame)

    def offsets(self) -> Tensor:
        """``(candidates, 3)`` int64 (t, h, w) offset of every token from the run's start
        position, in token order (frame, row, column), as the model's rope index computes them."""
        t = (torch.arange(self.frames, dtype=torch.float64) * self.t_step).long()
        grid = torch.stack(
            torch.meshgrid(t, torch.arange(self.height), torch.arange(self.width), indexing="ij"),
            dim=-1,
        )
        return grid.reshape(-1, 3)

    def extent(self) -> int:
        """The largest offset in the unpruned run."""
        return int(self.offsets().max()) if self.candidates else 0

    def advance(self) -> int:
        """How far the run moves the next token's position: the larger grid side, as
        transformers' rope index (5.19-5.25) does. vLLM's own moves one past :meth:`extent`;
        the two differ only for videos whose temporal offsets pass the larger grid side."""
        return max(self.height, self.width)


def prompt_positions(length: int, runs: Sequence[tuple[int, int, Run]]) -> tuple[Tensor, int]:
    """M-RoPE positions of a pruned prompt before encoding, and the decode position delta.

    Parameters
    ----------
    length : int
        Tokens in the (pruned) prompt.
    runs : sequence of (start, kept, Run)
        Each media run's first placeholder index in the prompt, its placeholder count and its
        unpruned run, in prompt order.

    Returns
    -------
    positions : Tensor
        ``(3, length)`` int64: text tokens at their unpruned positions; a run's placeholders all
        at its start position (their grid offsets are added once known).
    delta : int
        One past the unpruned prompt's largest position, minus ``length``: decode step ``i``
        (0-based, after the prompt) sits at ``length + i + delta``.
    """
    positions = torch.empty(3, length, dtype=torch.long)
    token = position = 0  # next prompt index; next free position
    largest = -1  # the unpruned prompt's largest position so far
    for start, kept, run in runs:
        if start < token or start + kept > length:
            raise ValueError(
                f"visprune: a media run at {start} (+{kept}) does not fit the prompt of "
                f"{length} tokens after index {token}."
            )
        text = start - token
        positions[:, token:start] = torch.arange(position, position + text)
        position += text
        positions[:, start : start + kept] = position
        largest = max(largest, position - 1, position + run.extent())
        position += run.advance()
        token = start + kept
    positions[:, token:] = torch.arange(position, position + length - token)
    largest = max(largest, position + length - token - 1)
    return positions, largest + 1 - length


def encode_offsets(offsets: Tensor, dtype: torch.dtype) -> Tensor:
    """``(n, 3)`` non-negative int offsets as ``(n, OFFSET_COLUMNS)`` columns of ``dtype``."""
    if offsets.numel() and int(offsets.max()) >= _DIGIT**_DIGITS:
        raise ValueError(
            f"visprune: an M-RoPE offset of {int(offsets.max())} exceeds {_DIGIT**_DIGITS - 1}; "
            "the media's grid or duration is too large to serve pruned."
        )
    digits = [torch.div(offsets, _DIGIT**i, rounding_mode="floor") % _DIGIT for i in range(_DIGITS)]
    return torch.cat(digits, dim=-1).to(dtype)


def decode_offsets(columns: Tensor) -> Tensor:
    """The ``(n, 3)`` int64 offsets of :func:`encode_offsets` columns."""
    digits = columns.round().long().reshape(columns.shape[0], _DIGITS, 3)
    scale = torch.tensor([_DIGIT**i for i in range(_DIGITS)], device=columns.device)
    return (digits * scale[None, :, None]).sum(1)


def media_runs(
    tokens: Sequence[int], start: int, stop: int, media_ids: Sequence[int]
) -> list[tuple[int, int]]:
    """``(start, count)`` of each contiguous run of ``media_ids`` in ``tokens[start:stop]``."""
    runs: list[tuple[int, int]] = []
    media = set(media_ids)
    index = start
    while index < stop:
        if tokens[index] in media:
            first = index
            while index < stop and tokens[index] in media:
                index += 1
            runs.append((first, index - first))
        else:
            index += 1
    return runs
