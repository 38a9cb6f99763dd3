"""Frames x kept tokens: one clip's frames as separate, numbered tiles, a row per method."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from .overlay import overlay
from .sheet import MASK_NOTE, Panel, Sheet, answer_line, budget_text, table
from .text import BLACK, GREY, Line

__all__ = ["FramesRun", "frames_sheet"]

#: Outline of the answer's tokens in the unpruned row.
TARGET = (230, 0, 0)


@dataclass
class FramesRun:
    """One method's run on a clip.

    Attributes
    ----------
    method : str
        Its name (``"unpruned"`` for the reference run).
    kept : sequence or None
        Per frame, the frame's ``Selection`` (or kept indices); None when every token was kept.
    answer : str
        The model's answer.
    tokens : int or None
        Tokens kept per frame, for the label; None with ``kept`` None.
    """

    method: str
    kept: Sequence[Any] | None
    answer: str
    tokens: int | None = None


def frames_sheet(
    frames: Sequence[Image.Image],
    runs: Sequence[FramesRun],
    *,
    question: str,
    expected: str | None,
    grid: tuple[int, int],
    scale: int = 3,
    targets: Sequence[tuple[int, int]] = (),
    title: Sequence[Line] = (),
    notes: bool = True,
) -> Sheet:
    """A clip's frames as numbered tiles (``frame 1`` ...), a row per run with the dropped
    tokens masked and the method, its budget per frame and the model's answer (right or wrong)
    at the row's head; the question and its right answer above.

    Parameters
    ----------
    frames : sequence of PIL.Image
        The clip's frames as the model saw them, ``F`` of them.
    runs : sequence of FramesRun
        One per row, in order; a run with ``kept`` None shows the plain frames with the
        ``targets`` outlined.
    question : str
        The question asked about the clip.
    expected : str or None
        Its right answer (None when not known).
    grid : (rows, cols)
        Token grid of one frame.
    scale : int
        Whole enlargement of each frame (nearest-neighbour).
    targets : sequence of (frame, cell)
        The tokens that hold the answer, outlined in the runs with ``kept`` None.
    title : sequence of Line
        Lines above the question.
    notes : bool
        Whether to say under the question what the outlines and the masking mean (once per
        picture when several clips are stacked).

    Returns
    -------
    Sheet
        The picture and ``boxes[row][frame]``, one tile per frame in every row.
    """
    rows, cols = grid
    tiles = [
        f.convert("RGB").resize((f.width * scale, f.height * scale), Image.NEAREST) for f in frames
    ]
    per_frame = rows * cols
    panels, heads = [], []
    for run in runs:
        if run.kept is None:
            row = [_outlined(tile, f, targets, grid) for f, tile in enumerate(tiles)]
            budget = f"all {per_frame} tokens per frame"
        else:
            if len(run.kept) != len(tiles):
                raise ValueError(
                    f"run {run.method!r} has {len(run.kept)} frame selections for "
                    f"{len(tiles)} frames."
                )
            row = [
                overlay(tile, kept, grid=grid) for tile, kept in zip(tiles, run.kept, strict=True)
            ]
            budget = budget_text(run.tokens, per_frame, "per frame") if run.tokens else ""
        heads.append(
            [(run.method, BLACK), (budget, GREY), answer_line(run.answer, expected, "answer: ")]
        )
        panels.append(row)
    lines = [*title, (f"Q: {question}", BLACK)]
    if expected is not None:
        lines.append((f"right answer: {expected}", BLACK))
    if notes and targets:
        lines.append(("The answer's tokens are outlined in red in the unpruned row.", GREY))
    if notes:
        lines.append((MASK_NOTE, GREY))
    columns = [[(f"frame {f + 1}", GREY)] for f in range(len(tiles))]
    return table(
        [[Panel(tile) for tile in row] for row in panels],
        title=lines,
        column_heads=columns,
        row_heads=heads,
    )


def _outlined(
    tile: Image.Image, frame: int, targets: Sequence[tuple[int, int]], grid: tuple[int, int]
) -> Image.Image:
    """``tile`` with the cells of ``targets`` in ``frame`` outlined."""
    rows, cols = grid
    out = tile.copy()
    draw = ImageDraw.Draw(out)
    width, height = out.width / cols, out.height / rows
    for at, cell in targets:
        if at == frame:
            row, col = divmod(cell, cols)
            box = (round(col * width), round(row * height))
            box += (round((col + 1) * width) - 1, round((row + 1) * height) - 1)
            draw.rectangle(box, outline=TARGET, width=2)
    return out
