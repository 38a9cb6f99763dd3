"""The visual inputs of one prompt, as every family's vision counter reads them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .blocks import check_count
from .families import FRAME_VIDEO_MODEL_TYPES, QWEN_TYPES


@dataclass(frozen=True)
class VisualInputs:
    """Images and videos of one prompt (see :func:`visprune.flops.model_flops` for each field).

    Attributes
    ----------
    visual_tokens : int
        Visual tokens of the whole prompt before pruning.
    images : int
        Images in the prompt.
    videos : int
        Videos in the prompt.
    frames : int
        Frames per video (LLaVA-NeXT-Video / OneVision).
    tiles_per_image : int or sequence of int
        Tower inputs per image (anyres tiles, InternVL tiles), one count or one per image.
    grids : sequence of (t, h, w), optional
        Qwen families: one patch grid per image and per video.
    """

    visual_tokens: int
    images: int
    videos: int
    frames: int
    tiles_per_image: int | Sequence[int]
    grids: Sequence[Sequence[int]] | None


def tower_inputs(tiles_per_image: int | Sequence[int], images: int) -> int:
    """Tower inputs of ``images`` images: ``tiles_per_image`` each, or one count per image."""
    if isinstance(tiles_per_image, int) and not isinstance(tiles_per_image, bool):
        check_count("tiles_per_image", tiles_per_image, minimum=1)
        return images * tiles_per_image
    counts = list(tiles_per_image)
    if len(counts) != images:
        raise ValueError(
            f"tiles_per_image has {len(counts)} counts for {images} images; give one per image."
        )
    return sum(check_count("tiles_per_image[...]", count, minimum=1) for count in counts)


def check_without_grids(model_type: str, visual: VisualInputs) -> None:
    """Families that take no Qwen grids, and videos only as frames where they have them."""
    if visual.grids is not None:
        raise ValueError(f"grids apply to {' / '.join(QWEN_TYPES)} only.")
    if visual.videos and model_type not in FRAME_VIDEO_MODEL_TYPES:
        raise ValueError(
            f"{model_type!r} has no video input; videos= applies to "
            f"{' / '.join(FRAME_VIDEO_MODEL_TYPES)} (Qwen: pass the video grids)."
        )
