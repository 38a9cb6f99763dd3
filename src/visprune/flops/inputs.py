"""What :func:`visprune.flops.model_flops` needs to know about each row of a processor batch.

A processor batch holds every image and video of every row in batch order (``pixel_values``,
``image_grid_thw``, ``image_sizes`` ...); :func:`describe_rows` hands each row its own: image
and video counts, frames per video, tiles per image and the Qwen ``(t, h, w)`` grids, as keyword
arguments of ``model_flops``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .families import ANYRES_MODEL_TYPES, QWEN_TYPES

_IMAGE_IDS = ("image_token_id", "image_token_index")
_VIDEO_IDS = ("video_token_id", "video_token_index")


def _token_id(config: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _runs(row: Tensor) -> int:
    """Contiguous runs of ``True`` in a 1-D bool tensor: one per image or video."""
    return int((row[1:] & ~row[:-1]).sum()) + int(row[:1].sum())


def _take_grids(grids: Any, start: int, tokens: int, merge: int, kind: str) -> tuple[list, int]:
    """The grids from ``start`` on whose merged tokens add up to ``tokens``."""
    taken, total, index = [], 0, start
    rows = [] if grids is None else [[int(v) for v in grid] for grid in grids]
    while total < tokens and index < len(rows):
        t, h, w = rows[index]
        taken.append((t, h, w))
        total += t * h * w // merge**2
        index += 1
    if total != tokens:
        raise ValueError(
            f"{kind}_grid_thw does not match the {kind} placeholders of the batch: a row has "
            f"{tokens} {kind} tokens but the grids left give {total}."
        )
    return taken, index


def _tiles(config: Any, image_sizes: Any) -> list[int]:
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return [
        image_size_to_num_patches(
            image_size=[int(v) for v in size],
            grid_pinpoints=config.image_grid_pinpoints,
            patch_size=config.vision_config.image_size,
        )
        for size in image_sizes
    ]


def describe_rows(config: Any, inputs: dict) -> list[dict[str, Any]]:
    """``model_flops`` keyword arguments (``images``, ``videos``, ``frames``, ``grids``,
    ``tiles_per_image``) for every row of a processor batch.

    Images and videos of a row are the contiguous runs of its image and video placeholder tokens
    (InternVL: its tiles, ``image_seq_length`` tokens each, each counted as an image of one
    tile); OneVision's ``batch_num_images`` gives its images per row where present. Qwen rows
    take the next ``image_grid_thw`` / ``video_grid_thw`` rows until their placeholder counts are
    met. LLaVA-NeXT / NeXT-Video / OneVision tiles per image follow from ``image_sizes`` as the
    model computes them (padding tiles of ``pixel_values`` are not encoded), one tile each for
    OneVision rows of several images; video frames from ``pixel_values_videos.shape[1]``.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The VLM config.
    inputs : dict
        Processor outputs: ``input_ids`` (B, L) and the visual tensors.

    Returns
    -------
    list of dict
        One dict per row.

    Raises
    ------
    ValueError
        Grids or image sizes that do not match the placeholders of the batch.
    """
    ids: Tensor = inputs["input_ids"]
    model_type = config.model_type
    image_id, video_id = _token_id(config, _IMAGE_IDS), _token_id(config, _VIDEO_IDS)
    image_rows = ids == image_id if image_id is not None else ids.new_zeros(ids.shape).bool()
    video_rows = ids == video_id if video_id is not None else ids.new_zeros(ids.shape).bool()
    described: list[dict[str, Any]] = []
    if model_type in QWEN_TYPES:
        merge = config.vision_config.spatial_merge_size
        image_at = video_at = 0
        for row in range(ids.shape[0]):
            images, image_at = _take_grids(
                inputs.get("image_grid_thw"), image_at, int(image_rows[row].sum()), merge, "image"
            )
            videos, video_at = _take_grids(
                inputs.get("video_grid_thw"), video_at, int(video_rows[row].sum()), merge, "video"
            )
            described.append(
                {"images": len(images), "videos": len(videos), "grids": images + videos}
            )
        return described
    videos = inputs.get("pixel_values_videos")
    frames = int(videos.shape[1]) if isinstance(videos, Tensor) and videos.dim() == 5 else 1
    sizes = inputs.get("image_sizes")
    per_row = inputs.get("batch_num_images")
    image_at = 0
    for row in range(ids.shape[0]):
        entry: dict[str, Any] = {"images": _runs(image_rows[row]), "videos": _runs(video_rows[row])}
        if entry["videos"]:
            entry["frames"] = frames
        if model_type == "internvl":
            entry["images"] = int(image_rows[row].sum()) // config.image_seq_length
        elif model_type in ANYRES_MODEL_TYPES:
            if per_row is not None:
                entry["images"] = int(per_row[row])
            count = entry["images"]
            if count and (sizes is None or image_at + count > len(sizes)):
                raise ValueError("image_sizes has fewer rows than the batch has images.")
            tiles = _tiles(config, sizes[image_at : image_at + count]) if count else []
            if model_type == "llava_onevision" and count > 1:
                tiles = [1] * count  # several images: the model encodes the base crop of each
            entry["tiles_per_image"] = tiles or 1
            image_at += count
        described.append(entry)
    return described
