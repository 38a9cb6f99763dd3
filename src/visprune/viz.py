"""Kept-token pictures: the image with dropped patches dimmed and the token grid drawn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageEnhance

__all__ = ["model_view", "overlay", "readable"]


def _cell_edges(size: int, cells: int) -> list[int]:
    return [round(i * size / cells) for i in range(cells + 1)]


def _one(
    image: Image.Image,
    kept: Sequence[int],
    grid: tuple[int, int],
    dim: float,
    line: tuple[int, int, int],
) -> Image.Image:
    rows, cols = grid
    base = image.convert("RGB")
    picture = ImageEnhance.Brightness(base).enhance(dim)
    xs, ys = _cell_edges(base.width, cols), _cell_edges(base.height, rows)
    for index in kept:
        row, col = divmod(int(index), cols)
        if not 0 <= row < rows:
            raise ValueError(f"kept index {index} is outside the {rows} x {cols} grid.")
        box = (xs[col], ys[row], xs[col + 1], ys[row + 1])
        picture.paste(base.crop(box), box[:2])
    draw = ImageDraw.Draw(picture)
    for x in xs[1:-1]:
        draw.line([(x, 0), (x, base.height)], fill=line, width=1)
    for y in ys[1:-1]:
        draw.line([(0, y), (base.width, y)], fill=line, width=1)
    return picture


def overlay(
    image: Image.Image | Sequence[Image.Image],
    selection: Any,
    *,
    grid: tuple[int, int] | None = None,
    dim: float = 0.3,
    line: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image | list[Image.Image]:
    """Show which patches a pruning kept.

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
        Brightness of dropped patches (0 black, 1 unchanged).
    line : RGB tuple
        Colour of the grid lines.

    Returns
    -------
    PIL.Image or list of PIL.Image
        One picture, or one per record when several are given.

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
        pictures.append(_one(picture, kept_list, tuple(shape), dim, line))
    return pictures if _is_many(selection) else pictures[0]


def _is_many(selection: Any) -> bool:
    """A list of records (or of index lists), rather than one record or one index list."""
    if isinstance(selection, (list, tuple)):
        return bool(selection) and not isinstance(selection[0], int)
    return False


#: Shorter side of a kept-token picture at least (a 64 x 64 view is too small to read) and
#: longer side at most (a 6000 x 4000 photo of a model without a crop would be unwieldy).
VIEW_MIN, VIEW_MAX = 384, 1024


def _size_entry(size: Any, key: str) -> int | None:
    """``size[key]`` of an image processor's size, a dict or (transformers 5) a ``SizeDict``."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def model_view(processor: Any, image: Image.Image) -> Image.Image:
    """The image as the model sees it: resized and centre-cropped like its image processor
    (LLaVA's CLIP processor: shortest edge to ``size``, then a ``crop_size`` centre crop).
    A processor without such sizes (Qwen-VL's dynamic resolution) sees the whole image.

    Parameters
    ----------
    processor : ProcessorMixin or BaseImageProcessor
        The model's processor (its ``image_processor`` is read) or image processor.
    image : PIL.Image
        The image as given to the processor.

    Returns
    -------
    PIL.Image
        The view whose token grid :func:`overlay` draws (LLaVA-1.5: 336 x 336).
    """
    image_processor = getattr(processor, "image_processor", processor)
    crop = getattr(image_processor, "crop_size", None)
    crop_height, crop_width = _size_entry(crop, "height"), _size_entry(crop, "width")
    if not (getattr(image_processor, "do_center_crop", False) and crop_height and crop_width):
        # The whole image reaches the model, resized (Qwen-VL's "shortest_edge" there is a
        # pixel count, not a side): its token grid spans the image as it is.
        return image
    short = _size_entry(getattr(image_processor, "size", None), "shortest_edge")
    if short and getattr(image_processor, "do_resize", True):
        scale = short / min(image.size)
        image = image.resize(
            (max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.BICUBIC
        )
    left, top = (image.width - crop_width) // 2, (image.height - crop_height) // 2
    return image.crop((left, top, left + crop_width, top + crop_height))


def readable(view: Image.Image) -> Image.Image:
    """``view`` scaled for looking at: small views enlarged by a whole factor (sharp pixels)
    until the shorter side reaches :data:`VIEW_MIN`, large ones reduced to :data:`VIEW_MAX`."""
    if max(view.size) > VIEW_MAX:
        scale = VIEW_MAX / max(view.size)
        size = (max(1, round(view.width * scale)), max(1, round(view.height * scale)))
        return view.resize(size, Image.LANCZOS)
    factor = min(-(-VIEW_MIN // min(view.size)), VIEW_MAX // max(view.size))
    if factor > 1:
        return view.resize((view.width * factor, view.height * factor), Image.NEAREST)
    return view
