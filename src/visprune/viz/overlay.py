"""Kept-token overlays: dropped patches masked, kept patches left exactly as they were."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["overlay"]

#: Step of the brightness levels a dropped patch is dimmed to.
LEVEL = 8


def _cell_edges(size: int, cells: int) -> list[int]:
    return [round(i * size / cells) for i in range(cells + 1)]


def _mask(
    image: Image.Image,
    kept: Sequence[int],
    grid: tuple[int, int],
    dim: float,
    line: tuple[int, int, int],
    hatch: int,
) -> Image.Image:
    """``image`` with every cell of ``grid`` outside ``kept`` dimmed to ``dim`` (in steps of
    :data:`LEVEL`), hatched every ``hatch`` px and outlined on its top and left edge in
    ``line``; kept cells untouched."""
    rows, cols = grid
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    xs, ys = _cell_edges(width, cols), _cell_edges(height, rows)
    kept_cells = np.zeros((rows, cols), dtype=bool)
    for index in kept:
        row, col = divmod(int(index), cols)
        if not 0 <= row < rows:
            raise ValueError(f"kept index {index} is outside the {rows} x {cols} grid.")
        kept_cells[row, col] = True
    # Cell of every pixel, then "dropped" per pixel: the grid need not divide the image.
    row_of = np.searchsorted(ys[1:], np.arange(height), side="right")
    col_of = np.searchsorted(xs[1:], np.arange(width), side="right")
    dropped = ~kept_cells[row_of[:, None], col_of[None, :]]
    out = pixels.copy()
    # Dimmed to steps of LEVEL: the look is the same, and the PNG of a sheet half the size
    # (dimmed noise in few levels compresses well, the hatching does not).
    dimmed = pixels[dropped].astype(np.float32) * dim
    out[dropped] = (np.floor(dimmed / LEVEL) * LEVEL).astype(np.uint8)
    # Hatching and the grid make a masked cell unmistakable even where the image is dark.
    y, x = np.mgrid[0:height, 0:width]
    marks = np.zeros_like(dropped)
    if hatch:
        marks |= (x + y) % hatch == 0
    marks |= np.isin(x, xs[:-1]) | np.isin(y, ys[:-1])
    out[dropped & marks] = line
    return Image.fromarray(out)


def overlay(
    image: Image.Image | Sequence[Image.Image],
    selection: Any,
    *,
    grid: tuple[int, int] | None = None,
    dim: float = 0.3,
    line: tuple[int, int, int] = (128, 128, 128),
    hatch: int = 8,
) -> Image.Image | list[Image.Image]:
    """Show which patches a pruning kept: dropped patches dimmed, hatched and outlined, kept
    patches bit-identical to ``image``.

    Draw on the view the model saw (:func:`visprune.viz.model_view`), enlarged first
    (:func:`visprune.viz.readable`) so the hatching does not hide a small image.

    Parameters
    ----------
    image : PIL.Image or sequence of PIL.Image
        The image as the model saw it (after resizing/cropping), or one image per record (the
        frames of a video, the images of a multi-image prompt).
    selection : Selection or sequence of Selection
        Records from ``handle.selections`` (``kept`` indices in raster order over ``grid``), or
        plain index sequences together with ``grid``.
    grid : (rows, cols), optional
        Token grid; default: the record's ``grid`` (LLaVA: 24 x 24; Qwen-VL: the merged grid).
    dim : float
        Brightness of dropped patches (0 black, 1 unchanged, in steps of :data:`LEVEL`).
    line : RGB tuple
        Colour of the hatching and of the dropped patches' outlines.
    hatch : int
        Spacing of the diagonal hatching in pixels; 0 for none.

    Returns
    -------
    PIL.Image or list of PIL.Image
        One RGB picture the size of ``image``, or one per record when several are given.

    Raises
    ------
    ValueError
        When a record has no single grid (LLaVA-NeXT / OneVision anyres images: tiles and newline
        tokens), when the counts of images and records differ, or an index is out of the grid.
    """
    records = list(selection) if _is_many(selection) else [selection]
    images = list(image) if isinstance(image, Sequence) else [image] * len(records)
    if len(images) != len(records):
        raise ValueError(f"got {len(images)} images for {len(records)} selection records.")
    if not 0.0 <= dim <= 1.0:
        raise ValueError(f"dim must be in [0, 1], got {dim!r}.")
    if hatch < 0:
        raise ValueError(f"hatch is a spacing in pixels (0 for none), got {hatch!r}.")
    pictures = []
    for picture, record in zip(images, records, strict=True):
        kept = getattr(record, "kept", record)
        shape = grid or getattr(record, "grid", None)
        if shape is None:
            raise ValueError(
                "this selection has no single token grid (LLaVA-NeXT / OneVision anyres images "
                "mix tiles and newline tokens); pass grid=(rows, cols) for a plain grid."
            )
        kept_list = kept.tolist() if hasattr(kept, "tolist") else list(kept)
        pictures.append(_mask(picture, kept_list, tuple(shape), dim, line, hatch))
    return pictures if _is_many(selection) else pictures[0]


def _is_many(selection: Any) -> bool:
    """A list of records (or of index lists), rather than one record or one index list."""
    if isinstance(selection, (list, tuple)):
        return bool(selection) and not isinstance(selection[0], int)
    return False
