"""Exact matmul FLOPs of a Hugging Face VLM, read from its config (pure math).

:func:`model_flops` counts the vision tower, projector, grouped-query attention, the gated
three-matrix MLP (or routed experts) and the ``lm_head``, for prefill and for decoding, images
and videos, for every family of :data:`~visprune.flops.MODEL_TYPES`. Each family's vision part is
counted in its own module (:mod:`~visprune.flops.llava`, :mod:`~visprune.flops.qwen`,
:mod:`~visprune.flops.internvl`, :mod:`~visprune.flops.gemma3`), picked by ``model_type``; the
language model in :mod:`~visprune.flops.language`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import gemma3, internvl, llava, qwen
from .blocks import check_count
from .families import (
    FRAME_VIDEO_MODEL_TYPES,
    LLAVA_TYPES,
    MODEL_TYPES,
    QWEN_TYPES,
    TILED_MODEL_TYPES,
)
from .language import language_flops
from .visual import VisualInputs, tower_inputs

LOGITS = ("last", "all")

#: The vision counter of each family: ``(config, VisualInputs) -> (vision, projector)`` FLOPs.
VISION_FLOPS: dict[str, Callable[[Any, VisualInputs], tuple[float, float]]] = {
    **dict.fromkeys(LLAVA_TYPES, llava.vision_flops),
    **dict.fromkeys(QWEN_TYPES, qwen.vision_flops),
    "internvl": internvl.vision_flops,
    "gemma3": gemma3.vision_flops,
}


@dataclass(frozen=True)
class FlopsBreakdown:
    """FLOPs of one forward pass (or a sum of them), by part.

    Attributes
    ----------
    vision : float
        Vision tower: patch embedding plus its transformer layers (and SigLIP's pooling head
        when the config enables it, as the tower computes it).
    projector : float
        Multimodal projector (LLaVA families, InternVL, Gemma 3; LLaVA-NeXT-Video's ``"conv"``
        frame pooling included) or patch merger (Qwen; Qwen3-VL's deepstack mergers included).
    attention : float
        Language model: q/k/v/o projections plus the attention scores and weighted sum.
    mlp : float
        Language model: gate, up and down projections (Qwen3-VL-MoE's sparse layers: the
        router and the routed experts).
    lm_head : float
        Output projection to the vocabulary.
    """

    vision: float = 0.0
    projector: float = 0.0
    attention: float = 0.0
    mlp: float = 0.0
    lm_head: float = 0.0

    @property
    def total(self) -> float:
        """Sum of all parts."""
        return self.vision + self.projector + self.attention + self.mlp + self.lm_head


def model_flops(
    config: Any,
    visual_tokens: int,
    text_tokens: int,
    *,
    images: int = 1,
    videos: int = 0,
    frames: int = 1,
    grids: Sequence[Sequence[int]] | None = None,
    decode_steps: int = 0,
    kept_visual_tokens: int | None = None,
    tiles_per_image: int | Sequence[int] = 1,
    logits: str = "last",
    vision: bool = True,
    layer_kept_visual_tokens: Sequence[int] | None = None,
) -> dict[str, FlopsBreakdown]:
    """Exact matmul FLOPs of a Hugging Face VLM, read from its config (pure math).

    Counts every matrix product, a multiply-add as two FLOPs, and ignores norms, activations,
    softmax, rotary embeddings, pooling and interpolation, bias adds and residual adds (all
    linear in the token count and small). Attention scores and the weighted sum are counted over
    the full ``n x n`` matrix in prefill, as the dense (eager / SDPA math) kernels compute it,
    causal mask or not; vision towers attend only where the model lets them (per tile, per
    frame, per Qwen2.5-VL window). The count equals ``torch.utils.flop_counter.FlopCounterMode``
    on the eager models of every family in :data:`~visprune.flops.MODEL_TYPES`, images and videos.

    What each family's vision part is:

    * LLaVA / LLaVA-NeXT / OneVision images, InternVL: the CLIP / SigLIP / InternViT tower on
      every crop (tile), then the projector on every crop's tokens (InternVL: after the pixel
      shuffle).
    * LLaVA-NeXT-Video / OneVision videos: the tower on every frame, then the projector on the
      pooled tokens (NeXT-Video; ``"conv"`` pooling counted with the projector) or on every
      patch before the bilinear pooling (OneVision).
    * Gemma 3: SigLIP per image (pan-and-scan crops count as images), the projector on the
      ``mm_tokens_per_image`` pooled tokens.
    * Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the 3-D patch embedding and ViT blocks on every patch of
      every image and video, attention within each frame (Qwen2.5-VL: within each window except
      in ``fullatt_block_indexes``), the gated MLP of Qwen2.5-VL, and the patch merger (Qwen3-VL:
      plus one deepstack merger per ``deepstack_visual_indexes`` entry).

    Parameters
    ----------
    config : transformers.PretrainedConfig
        A VLM config with ``model_type`` in :data:`~visprune.flops.MODEL_TYPES`,
        ``text_config`` (Llama, Mistral, Qwen2/3, Qwen3-MoE or Gemma 3 style: grouped-query
        attention, gated three-matrix MLP or routed experts) and ``vision_config``.
    visual_tokens : int
        Visual tokens of the whole prompt (all images and videos) before pruning: what the
        placeholders expand to. For the Qwen families ``t*h*w / spatial_merge_size**2`` summed
        over ``grids`` (checked against them). For the LLaVA families, Gemma 3 and InternVL the
        vision and projector cost comes from the config per crop / frame, not from this count.
    text_tokens : int
        Text tokens of the prompt (system prompt and placeholders' neighbours included).
    images : int
        Images in the prompt; the vision tower runs once per image (per tile, see below).
    videos : int
        Videos in the prompt. LLaVA-NeXT-Video / OneVision: each of ``frames`` frames. Qwen: each
        described by its row of ``grids``. Other families have no video input (an error).
    frames : int
        Frames per video (LLaVA-NeXT-Video / OneVision: ``pixel_values_videos.shape[1]``).
    grids : sequence of (t, h, w), optional
        Qwen families: one row per image and per video, in patches (``image_grid_thw`` rows,
        then ``video_grid_thw`` rows; the order does not matter), so ``images + videos`` rows.
        Required for Qwen2.5-VL, whose windows depend on each shape, and for Qwen videos;
        without it Qwen2-VL / Qwen3-VL images are taken as single frames of
        ``visual_tokens / images`` tokens each (their cost depends on nothing else).
    decode_steps : int
        Tokens decoded after prefill; step ``t`` (1-based) feeds one token against a cache of
        ``n + t - 1`` entries, so it attends over ``n + t`` keys (sliding-window layers, such
        as five in six of Gemma 3's, over at most ``sliding_window``: what the dynamic cache
        keeps).
    kept_visual_tokens : int, optional
        Visual tokens left after pruning; the language model sees ``kept + text_tokens`` tokens.
        Defaults to ``visual_tokens`` (no pruning). The vision tower and projector always run on
        every patch.
    tiles_per_image : int or sequence of int
        LLaVA-NeXT / NeXT-Video / OneVision images: crops the vision tower encodes per image,
        base image included (what ``image_size_to_num_patches`` returns; OneVision prompts with
        several images encode only the base crop of each: 1). InternVL: tiles per image,
        thumbnail included (the processor's ``num_patches``). One count for every image, or one
        per image. Must be 1 for the other families.
    logits : {"last", "all"}
        Prefill ``lm_head`` positions: ``"last"`` (what ``generate`` does with
        ``logits_to_keep=1``) or ``"all"`` (a plain forward). Decode steps always project one.
    vision : bool
        Count the vision tower and projector; ``False`` counts the language model only (vision
        and projector are then zero).
    layer_kept_visual_tokens : sequence of int, optional
        Methods that prune inside the language model (FastV, PyramidDrop, DART): the visual
        tokens each decoder layer sees at prefill, one count per layer (``visual_tokens``
        before the pruning layer). Decode steps attend over ``kept_visual_tokens`` in every
        layer (the KV cache holds the kept rows). The scores those methods recompute (one
        query row and the keys of one layer) are not counted.

    Returns
    -------
    dict[str, FlopsBreakdown]
        ``"prefill"`` (vision, projector and the language model on the prompt) and ``"decode"``
        (the language model over all ``decode_steps`` steps; vision and projector are zero).
        Qwen3-VL-MoE's router and routed experts are in ``mlp``: ``num_experts_per_tok`` experts
        per token, as every transformers experts kernel computes them (not all experts densely).

    Raises
    ------
    ValueError
        A negative or non-int count, an unknown ``logits`` value, an unsupported model type,
        videos for a family without a video input, Qwen grids missing where the cost depends on
        them, or grids / tile counts that disagree with the other counts.
    """
    kept = _check_arguments(
        config,
        visual_tokens,
        text_tokens,
        images,
        videos,
        frames,
        decode_steps,
        kept_visual_tokens,
        tiles_per_image,
        logits,
    )
    vis = proj = 0.0
    if vision and visual_tokens:
        if images + videos == 0:
            raise ValueError("visual_tokens > 0 needs images >= 1 or videos >= 1.")
        visual = VisualInputs(visual_tokens, images, videos, frames, tiles_per_image, grids)
        vis, proj = VISION_FLOPS[config.model_type](config, visual)

    text = config.text_config
    (attn, mlp), (d_attn, d_mlp) = language_flops(
        text,
        config.model_type,
        visual_tokens,
        kept,
        text_tokens,
        decode_steps,
        layer_kept_visual_tokens,
    )
    head = 2.0 * text.hidden_size * text.vocab_size  # lm_head FLOPs of one position
    n = kept + text_tokens
    positions = n if logits == "all" else min(n, 1)
    prefill = FlopsBreakdown(vis, proj, attn, mlp, positions * head)
    decode = FlopsBreakdown(0.0, 0.0, d_attn, d_mlp, decode_steps * head)
    return {"prefill": prefill, "decode": decode}


def _check_arguments(
    config: Any,
    visual_tokens: int,
    text_tokens: int,
    images: int,
    videos: int,
    frames: int,
    decode_steps: int,
    kept_visual_tokens: int | None,
    tiles_per_image: int | Sequence[int],
    logits: str,
) -> int:
    """Validate :func:`model_flops`'s counts against each other and the family; the kept count."""
    check_count("visual_tokens", visual_tokens)
    check_count("text_tokens", text_tokens)
    check_count("images", images)
    check_count("videos", videos)
    check_count("frames", frames, minimum=1)
    check_count("decode_steps", decode_steps)
    kept = visual_tokens if kept_visual_tokens is None else kept_visual_tokens
    check_count("kept_visual_tokens", kept)
    if kept > visual_tokens:
        raise ValueError(f"kept_visual_tokens ({kept}) exceeds visual_tokens ({visual_tokens}).")
    if logits not in LOGITS:
        raise ValueError(f"logits must be one of {', '.join(LOGITS)}, got {logits!r}.")
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}."
        )
    if tiles_per_image != 1 and model_type not in TILED_MODEL_TYPES:
        raise ValueError(f"tiles_per_image applies to {' / '.join(TILED_MODEL_TYPES)} only.")
    tower_inputs(tiles_per_image, images)
    if frames != 1 and model_type not in FRAME_VIDEO_MODEL_TYPES:
        raise ValueError(f"frames applies to {' / '.join(FRAME_VIDEO_MODEL_TYPES)} only.")
    return kept
