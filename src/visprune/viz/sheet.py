"""Labelled sheets of kept-token pictures: a title, column heads, row heads, captioned panels.

Every label is measured before the canvas is made, so the canvas is as large as its text needs
and no label is ever cut off; long labels wrap at spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from .text import GREY, RIGHT, WRONG, Line, block_size, draw_block

__all__ = [
    "MASK_NOTE",
    "Panel",
    "Sheet",
    "answer_line",
    "budget_text",
    "frame_colour",
    "kept_line",
    "stack",
    "table",
    "verdict",
]

#: What the masking means, for the title of every kept-token sheet.
MASK_NOTE = "Kept tokens shown as the model saw them; dropped ones dimmed and hatched."

GAP = 10  # between panels
MARGIN = 12  # around the sheet
BORDER = 3  # the right / wrong frame around a panel
ROW_HEAD_WIDTH = 190  # row heads wrap at this width (wider only for one long word)
TITLE_MIN_WIDTH = 360  # a one-panel sheet still gets a readable title line


@dataclass
class Panel:
    """One picture of a sheet with the lines under it and, optionally, a coloured frame (the
    colour of a right or wrong answer)."""

    image: Image.Image
    caption: Sequence[Line] = ()
    frame: tuple[int, int, int] | None = None


@dataclass
class Sheet:
    """A drawn sheet and where each panel's image landed: ``boxes[row][column]`` is its
    ``(left, top, right, bottom)`` in ``picture``."""

    picture: Image.Image
    boxes: list[list[tuple[int, int, int, int]]] = field(default_factory=list)


def verdict(answer: str, expected: str | None) -> bool | None:
    """Whether ``answer`` is right (case and surrounding spaces ignored); None when there is
    no right answer to compare with."""
    if expected is None:
        return None
    return answer.strip().lower() == expected.strip().lower()


def answer_line(answer: str, expected: str | None, prefix: str = "model's answer: ") -> Line:
    """The model's answer, marked ``right`` or ``wrong`` against ``expected`` (in colour and in
    words), or plain when ``expected`` is None."""
    right = verdict(answer, expected)
    if right is None:
        return f"{prefix}{answer}", (0, 0, 0)
    return f"{prefix}{answer} - {'right' if right else 'wrong'}", RIGHT if right else WRONG


def frame_colour(answer: str, expected: str | None) -> tuple[int, int, int] | None:
    """The frame of a panel whose answer is right or wrong; None when not known."""
    right = verdict(answer, expected)
    return None if right is None else (RIGHT if right else WRONG)


def budget_text(kept: int, total: int, unit: str = "tokens") -> str:
    """``7 of 64 tokens (11 %)``: the budget a method ran at."""
    return f"{kept} of {total} {unit} ({100 * kept / total:.0f} %)"


def kept_line(method: str, kept: int, total: int, unit: str = "tokens") -> str:
    """``divprune: 7 of 64 tokens (11 %)``: the method and the budget it ran at."""
    return f"{method}: {budget_text(kept, total, unit)}"


def table(
    panels: Sequence[Sequence[Panel]],
    *,
    title: Sequence[Line] = (),
    column_heads: Sequence[Sequence[Line]] | None = None,
    row_heads: Sequence[Sequence[Line]] | None = None,
) -> Sheet:
    """Lay ``panels[row][column]`` out as a table under ``title``.

    Columns are as wide as their widest panel (or column head word), rows as tall as their
    tallest panel with its caption (or row head); column heads wrap to their column, row heads
    to :data:`ROW_HEAD_WIDTH`, the title to the whole width.

    Returns
    -------
    Sheet
        The white RGB picture and each panel image's box.
    """
    rows = [list(row) for row in panels]
    if not rows or not all(rows) or len({len(row) for row in rows}) != 1:
        raise ValueError("table needs at least one panel and the same count in every row.")
    ncols = len(rows[0])
    if column_heads is not None and len(column_heads) != ncols:
        raise ValueError(f"got {len(column_heads)} column heads for {ncols} columns.")
    if row_heads is not None and len(row_heads) != len(rows):
        raise ValueError(f"got {len(row_heads)} row heads for {len(rows)} rows.")
    pad = BORDER + 1  # room for the frame outside the image
    widths = _column_widths(rows, column_heads, pad)
    head_width = 0
    if row_heads is not None:
        head_width = max(block_size(head, ROW_HEAD_WIDTH)[0] for head in row_heads) + GAP
    heights = _row_heights(rows, widths, row_heads, pad)
    body_width = head_width + sum(widths) + GAP * (ncols - 1)
    title_width = max(body_width, TITLE_MIN_WIDTH)
    title_width = max(title_width, block_size(title, title_width)[0])
    title_height = block_size(title, title_width)[1] + (GAP if title else 0)
    col_head_height = 0
    if column_heads is not None:
        col_head_height = (
            max(block_size(h, w)[1] for h, w in zip(column_heads, widths, strict=True)) + 4
        )
    canvas = (
        2 * MARGIN + max(body_width, title_width),
        2 * MARGIN + title_height + col_head_height + sum(heights) + GAP * (len(rows) - 1),
    )
    picture = Image.new("RGB", canvas, "white")
    draw = ImageDraw.Draw(picture)
    draw_block(draw, (MARGIN, MARGIN), title, title_width)
    lefts = [MARGIN + head_width + sum(widths[:c]) + GAP * c for c in range(ncols)]
    top = MARGIN + title_height
    if column_heads is not None:
        for c, head in enumerate(column_heads):
            draw_block(draw, (lefts[c], top), head, widths[c])
        top += col_head_height
    boxes = []
    for r, row in enumerate(rows):
        if row_heads is not None:
            draw_block(draw, (MARGIN, top + pad), row_heads[r], ROW_HEAD_WIDTH)
        row_boxes = []
        for c, panel in enumerate(row):
            left, image_top = lefts[c] + pad, top + pad
            picture.paste(panel.image.convert("RGB"), (left, image_top))
            right, bottom = left + panel.image.width, image_top + panel.image.height
            if panel.frame is not None:
                draw.rectangle(
                    (left - pad, image_top - pad, right + pad - 1, bottom + pad - 1),
                    outline=panel.frame,
                    width=BORDER,
                )
            if panel.caption:
                draw_block(draw, (lefts[c], bottom + pad), panel.caption, widths[c])
            row_boxes.append((left, image_top, right, bottom))
        boxes.append(row_boxes)
        top += heights[r] + GAP
    return Sheet(picture, boxes)


def _caption_size(panel: Panel, width: int) -> tuple[int, int]:
    return block_size(panel.caption, width) if panel.caption else (0, 0)


def _column_widths(
    rows: list[list[Panel]], column_heads: Sequence[Sequence[Line]] | None, pad: int
) -> list[int]:
    """Each column's width: its widest framed panel, or a wider word of a caption or head."""
    widths = []
    for c in range(len(rows[0])):
        width = max(row[c].image.width + 2 * pad for row in rows)
        # a caption or head wraps to the column; one word wider than it widens the column
        width = max([width] + [_caption_size(row[c], width)[0] for row in rows])
        if column_heads is not None:
            width = max(width, block_size(column_heads[c], width)[0])
        widths.append(width)
    return widths


def _row_heights(
    rows: list[list[Panel]],
    widths: list[int],
    row_heads: Sequence[Sequence[Line]] | None,
    pad: int,
) -> list[int]:
    """Each row's height: its tallest framed panel with its caption, or its row head."""
    heights = []
    for r, row in enumerate(rows):
        height = max(
            panel.image.height + 2 * pad + _caption_size(panel, widths[c])[1]
            for c, panel in enumerate(row)
        )
        if row_heads is not None:
            height = max(height, block_size(row_heads[r], ROW_HEAD_WIDTH)[1])
        heights.append(height)
    return heights


def stack(pictures: Sequence[Image.Image], *, rule: bool = True) -> Image.Image:
    """``pictures`` one under the other on white, left-aligned, a grey rule between them."""
    width = max(p.width for p in pictures)
    height = sum(p.height for p in pictures) + GAP * (len(pictures) - 1)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    top = 0
    for i, picture in enumerate(pictures):
        out.paste(picture, (0, top))
        top += picture.height
        if rule and i < len(pictures) - 1:
            draw.line((MARGIN, top + GAP // 2, width - MARGIN, top + GAP // 2), fill=GREY)
        top += GAP
    return out
