"""Exact matmul FLOPs of the Qwen-VL vision towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), pure math.

The three towers share a layout: a 3-D patch embedding (a convolution over
``temporal_patch_size x patch_size x patch_size`` pixels per patch), ``depth`` pre-norm blocks
with a fused ``qkv`` projection and an output projection, and a patch merger that concatenates
``spatial_merge_size²`` neighbouring patches and maps them to the language model's width. They
differ in the MLP (two matrices, or Qwen2.5-VL's gated three), in which tokens attend to which
(every block over one frame, or Qwen2.5-VL's windows), and in Qwen3-VL's deepstack mergers.

Attention never crosses a frame: ``cu_seqlens`` has one entry per temporal patch group of every
image or video (``repeat_interleave(h * w, t)``), and the eager / SDPA paths attend within each
entry alone, so the score and weighted-sum FLOPs are ``4 L² d`` summed over those entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .visual import VisualInputs


def check_grids(grids: Sequence[Sequence[int]], merge: int) -> list[tuple[int, int, int]]:
    """Validate ``(t, h, w)`` patch grids, one per image or video (``image_grid_thw`` rows).

    Raises
    ------
    ValueError
        A grid that is not three positive ints, or an ``h`` / ``w`` that the merger cannot split
        into ``merge x merge`` blocks.
    """
    checked = []
    for grid in grids:
        values = tuple(int(v) if hasattr(v, "__index__") else v for v in grid)
        if len(values) != 3 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
        ):
            raise ValueError(f"each grid must be three positive ints (t, h, w), got {grid!r}.")
        t, h, w = values
        if h % merge or w % merge:
            raise ValueError(
                f"grid {values}: h and w must be multiples of spatial_merge_size ({merge})."
            )
        checked.append((t, h, w))
    return checked


def window_lengths(grid: tuple[int, int, int], vision: Any) -> list[int]:
    """Patches in each attention window of one image or video, as Qwen2.5-VL partitions it.

    Mirrors ``get_vision_window_index``: per frame, the ``h/m x w/m`` grid of merged tokens is
    cut into windows of ``window_size // m // patch_size`` merged tokens a side from the top-left
    corner, so the windows on the bottom and right edges are smaller; the padded empty windows
    the model drops have no length here.

    Parameters
    ----------
    grid : tuple of int
        ``(t, h, w)`` in patches.
    vision : Qwen2_5_VLVisionConfig
        ``window_size``, ``patch_size`` and ``spatial_merge_size``.

    Returns
    -------
    list of int
        Window lengths in patches, frame by frame; they sum to ``t * h * w``.
    """
    merge = vision.spatial_merge_size
    side = vision.window_size // merge // vision.patch_size
    if side < 1:
        raise ValueError(
            f"window_size ({vision.window_size}) is smaller than one merged token "
            f"({merge} x {vision.patch_size} px): the model cannot partition it."
        )
    t, h, w = grid

    def cuts(tokens: int) -> list[int]:
        return [side] * (tokens // side) + ([tokens % side] if tokens % side else [])

    frame = [rows * cols * merge * merge for rows in cuts(h // merge) for cols in cuts(w // merge)]
    return frame * t


def _scores(lengths: list[int], width: int) -> float:
    """Scores plus weighted sum of packed attention, each length attending only within itself."""
    return float(sum(4 * length * length * width for length in lengths))


def qwen_vision_flops(config: Any, grids: Sequence[Sequence[int]]) -> tuple[float, float]:
    """Vision tower and merger FLOPs of a Qwen-VL model on the given images and videos.

    Parameters
    ----------
    config : Qwen2VLConfig, Qwen2_5_VLConfig, Qwen3VLConfig or Qwen3VLMoeConfig
        The VLM config (its ``vision_config`` is read).
    grids : sequence of (t, h, w)
        One row per image or video, in patches, as ``image_grid_thw`` / ``video_grid_thw``.

    Returns
    -------
    tuple of float
        ``(vision, projector)``: patch embedding plus blocks, and the patch merger (Qwen3-VL:
        plus its deepstack mergers, each a merger of its own on the same tokens).
    """
    vision, model_type = config.vision_config, config.model_type
    merge = vision.spatial_merge_size
    grids = check_grids(grids, merge)
    patches = sum(t * h * w for t, h, w in grids)
    frames = [h * w for t, h, w in grids for _ in range(t)]
    if model_type == "qwen2_vl":
        d = vision.embed_dim
        mlp = 4.0 * d * int(d * vision.mlp_ratio)  # fc1 and fc2
        out = vision.hidden_size
    else:
        d = vision.hidden_size
        factor = 6.0 if model_type == "qwen2_5_vl" else 4.0  # gate/up/down, or fc1/fc2
        mlp = factor * d * vision.intermediate_size
        out = vision.out_hidden_size
    channels = getattr(vision, "in_channels", 3)
    kernel = channels * vision.temporal_patch_size * vision.patch_size**2
    tower = 2.0 * patches * kernel * d
    windows = (
        [length for grid in grids for length in window_lengths(grid, vision)]
        if model_type == "qwen2_5_vl"
        else frames
    )
    full_blocks = set(getattr(vision, "fullatt_block_indexes", None) or ())
    for block in range(vision.depth):
        lengths = frames if model_type != "qwen2_5_vl" or block in full_blocks else windows
        tower += patches * (8.0 * d * d + mlp) + _scores(lengths, d)
    wide = d * merge * merge
    merger = 2.0 * (patches // (merge * merge)) * (wide * wide + wide * out)
    # Qwen3-VL: one more merger per deepstack layer, on the same tokens.
    deepstack = getattr(vision, "deepstack_visual_indexes", None) or ()
    mergers = 1 + len(deepstack) if model_type in ("qwen3_vl", "qwen3_vl_moe") else 1
    return tower, mergers * merger


def qwen_grids_from_tokens(config: Any, visual_tokens: int, images: int) -> list[tuple]:
    """Stand-in grids for equal single-frame images, where the tower cost depends on the patch
    count alone (full attention per frame: every family but Qwen2.5-VL): ``images`` grids of
    ``visual_tokens / images`` merged tokens each, laid out as one row of merge blocks."""
    merge = config.vision_config.spatial_merge_size
    if visual_tokens % images:
        raise ValueError(
            f"visual_tokens ({visual_tokens}) must split evenly over images ({images}); pass "
            "grids=[(t, h, w), ...] (image_grid_thw / video_grid_thw rows) instead."
        )
    return [(1, merge, visual_tokens // images * merge)] * images


def vision_flops(config: Any, visual: VisualInputs) -> tuple[float, float]:
    """``(vision, projector)`` FLOPs of every image and video of one prompt, from its grids.

    Without ``grids``, Qwen2-VL / Qwen3-VL images are taken as equal single frames
    (:func:`qwen_grids_from_tokens`); Qwen2.5-VL's windows and every video need the grids.
    """
    grids, images, videos = visual.grids, visual.images, visual.videos
    if grids is None:
        if config.model_type == "qwen2_5_vl":
            raise ValueError(
                "Qwen2.5-VL's windowed vision tower depends on each image's shape: pass "
                "grids=[(t, h, w), ...] (the image_grid_thw / video_grid_thw rows)."
            )
        if videos:
            raise ValueError("Qwen videos: pass grids=[(t, h, w), ...] (the video_grid_thw rows).")
        grids = qwen_grids_from_tokens(config, visual.visual_tokens, images)
    elif len(grids) != images + videos:
        raise ValueError(
            f"grids has {len(grids)} rows for {images} images and {videos} videos; give "
            "one (t, h, w) per image and per video."
        )
    else:
        merge = config.vision_config.spatial_merge_size
        tokens = sum(t * h * w for t, h, w in check_grids(grids, merge)) // merge**2
        if tokens != visual.visual_tokens:
            raise ValueError(
                f"grids make {tokens} visual tokens (t*h*w / spatial_merge_size², summed), "
                f"not visual_tokens={visual.visual_tokens}."
            )
    return qwen_vision_flops(config, grids)
