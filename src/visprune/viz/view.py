"""The view a model saw of an image, and that view scaled for looking at."""

from __future__ import annotations

from typing import Any

from PIL import Image

__all__ = ["VIEW_MAX", "VIEW_MIN", "model_view", "readable"]


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
    """The image as the model sees it, made like its image processor does: padded to a square
    first where it pads (LLaVA's ``do_pad``), then either resized by the shortest edge and
    centre-cropped (LLaVA's CLIP processor: ``size``, then a ``crop_size`` crop) or resized to
    a fixed ``height`` x ``width`` (Gemma 3: squeezed to 896 x 896). A processor with neither
    (Qwen-VL's dynamic resolution) sees the whole image as it is.

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
    if getattr(image_processor, "do_pad", False) and hasattr(image_processor, "pad_to_square"):
        image = _square(image, getattr(image_processor, "image_mean", None))
    size = getattr(image_processor, "size", None)
    resize = getattr(image_processor, "do_resize", True)
    crop = getattr(image_processor, "crop_size", None)
    crop_height, crop_width = _size_entry(crop, "height"), _size_entry(crop, "width")
    if not (getattr(image_processor, "do_center_crop", False) and crop_height and crop_width):
        height, width = _size_entry(size, "height"), _size_entry(size, "width")
        if resize and height and width:
            return image.resize((width, height), Image.BICUBIC)
        # The whole image reaches the model, resized (Qwen-VL's "shortest_edge" there is a
        # pixel count, not a side): its token grid spans the image as it is.
        return image
    short = _size_entry(size, "shortest_edge")
    if short and resize:
        scale = short / min(image.size)
        image = image.resize(
            (max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.BICUBIC
        )
    left, top = (image.width - crop_width) // 2, (image.height - crop_height) // 2
    return image.crop((left, top, left + crop_width, top + crop_height))


def _square(image: Image.Image, mean: Any) -> Image.Image:
    """``image`` centred on a square of its longer side, filled with the processor's mean
    colour (what LLaVA's ``pad_to_square`` does)."""
    if image.width == image.height:
        return image
    fill = tuple(int(m * 255) for m in mean) if mean is not None else (0, 0, 0)
    side = max(image.size)
    square = Image.new("RGB", (side, side), fill)
    square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    return square


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
