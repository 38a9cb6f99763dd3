"""Analytic prefill FLOPs: the formula the DivPrune / OTPrune papers report (pure math).

``F(n) = T (4 n d² + 2 n² d + 2 n d m)`` for a decoder of ``T`` layers, hidden width ``d`` and FFN
width ``m`` on ``n`` tokens: the q/k/v/o projections, the attention scores and weighted sum, and a
two-matrix FFN. Each term is a count of multiply-adds (``4 n d²`` is the four ``d x d``
projections of ``n`` tokens): half the FLOPs of those terms when a multiply-add counts as two
FLOPs, as :func:`model_flops` counts them.

:func:`model_flops` is the exact count for a real Hugging Face VLM, read from its config: vision
tower, projector, grouped-query attention, the gated three-matrix MLP (or routed experts) and the
``lm_head``, for prefill and for decoding, images and videos, for every family of
:data:`MODEL_TYPES` (the Qwen-VL towers are in :mod:`visprune.flops_qwen`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .flops_qwen import QWEN_TYPES, check_grids, qwen_grids_from_tokens, qwen_vision_flops

#: Prompt text lengths the papers use for COCO, Flickr30k, GQA, MMB, MME, MMMU, NoCaps, OK-VQA,
#: POPE, SQA and SEED (system prompt not counted).
PAPER_TEXT_LENGTHS = (15, 15, 23, 83, 25, 113, 15, 39, 21, 91, 57)

FORMULAS = ("paper",)


def prefill_flops(
    seq_len: int, hidden: int, ffn: int, layers: int, formula: str = "paper"
) -> float:
    """Prefill FLOPs of a decoder on ``seq_len`` tokens.

    Parameters
    ----------
    seq_len : int
        Tokens in the prompt (text plus kept visual tokens).
    hidden, ffn, layers : int
        Hidden width ``d``, FFN width ``m`` and layer count ``T``.
    formula : {"paper"}
        ``"paper"``: ``T (4 n d² + 2 n² d + 2 n d m)``, as published by DivPrune and OTPrune.

    Returns
    -------
    float
        FLOPs.
    """
    if formula not in FORMULAS:
        raise ValueError(f"unknown FLOPs formula {formula!r}; available: {', '.join(FORMULAS)}.")
    for name, value in (("seq_len", seq_len), ("hidden", hidden), ("ffn", ffn), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
    n, d, m = seq_len, hidden, ffn
    return float(layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m))


@dataclass(frozen=True)
class PaperRow:
    """One row of the papers' efficiency table.

    Attributes
    ----------
    full_tflops, pruned_tflops : float
        Mean prefill TFLOPs over the benchmarks' text lengths, unpruned and pruned.
    percent : float
        Mean over benchmarks of the pruned / unpruned FLOPs ratio, in percent.
    """

    full_tflops: float
    pruned_tflops: float
    percent: float


def paper_table_row(
    hidden: int,
    ffn: int,
    layers: int,
    visual_tokens: int = 576,
    keep_ratio: float = 0.098,
    text_lengths: tuple[int, ...] = PAPER_TEXT_LENGTHS,
) -> PaperRow:
    """Reproduce a row of the published FLOPs table.

    LLaVA-1.5-7B (4096, 11008, 32) gives 3.228 -> 0.512 TFLOPs (15.63 %); LLaVA-1.5-13B
    (5120, 13824, 40) gives 6.281 -> 1.002 (15.71 %). The kept count is
    ``round(keep_ratio * visual_tokens)``, the budget rule of every method.
    """
    kept = max(1, round(keep_ratio * visual_tokens))
    full = [prefill_flops(visual_tokens + t, hidden, ffn, layers) for t in text_lengths]
    pruned = [prefill_flops(kept + t, hidden, ffn, layers) for t in text_lengths]
    ratios = [p / f for p, f in zip(pruned, full, strict=True)]
    count = len(text_lengths)
    return PaperRow(
        full_tflops=sum(full) / count / 1e12,
        pruned_tflops=sum(pruned) / count / 1e12,
        percent=100 * sum(ratios) / count,
    )


#: Families whose images are a base tile plus anyres tiles.
ANYRES_MODEL_TYPES = ("llava_next", "llava_next_video", "llava_onevision")
#: Families whose vision tower encodes several crops (tiles) per image.
TILED_MODEL_TYPES = (*ANYRES_MODEL_TYPES, "internvl")
#: VLM ``model_type`` values that :func:`model_flops` counts (language model, vision tower and
#: projector).
MODEL_TYPES = (
    "llava",
    "llava_next",
    "llava_next_video",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "internvl",
    "gemma3",
)
#: Those whose vision tower and projector it also counts (all of them).
VISION_MODEL_TYPES = MODEL_TYPES
#: Families with a video input of ``frames`` frames per video (``videos=``); the Qwen families'
#: videos are described by their ``grids`` instead.
FRAME_VIDEO_MODEL_TYPES = ("llava_next_video", "llava_onevision")
#: Vision towers of the LLaVA families that it counts.
_VIT_TYPES = ("clip_vision_model", "siglip_vision_model")
LOGITS = ("last", "all")


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


def _count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def _attr(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if default is not None:
        return default
    raise ValueError(f"config {type(config).__name__} has none of {', '.join(names)}.")


def _attention(
    queries: int, keys: int, hidden: int, heads: int, kv_heads: int, head_dim: int
) -> float:
    """q/k/v/o projections of ``queries`` tokens plus scores and weighted sum over ``keys``."""
    projections = 2 * queries * hidden * head_dim * (2 * heads + 2 * kv_heads)
    return float(projections + 4 * queries * keys * heads * head_dim)


def _vit_layers(tokens: int, hidden: int, ffn: int, layers: int) -> float:
    """Pre-norm ViT layers (full attention over ``tokens``, two-matrix MLP)."""
    return layers * (_attention(tokens, tokens, hidden, 1, 1, hidden) + 4.0 * tokens * hidden * ffn)


def _vit_tower(vision: Any) -> tuple[float, int]:
    """FLOPs of one CLIP / SigLIP tower input, and the tokens the tower outputs."""
    vtype = getattr(vision, "model_type", None)
    if vtype not in _VIT_TYPES:
        raise ValueError(
            f"vision tower {vtype!r} is not supported; supported: {', '.join(_VIT_TYPES)}."
        )
    d, patch = vision.hidden_size, vision.patch_size
    patches = (vision.image_size // patch) ** 2
    tokens = patches + (1 if vtype == "clip_vision_model" else 0)  # CLIP prepends a CLS token
    channels = getattr(vision, "num_channels", 3)
    embed = 2.0 * patches * channels * patch * patch * d
    ffn = vision.intermediate_size
    tower = embed + _vit_layers(tokens, d, ffn, vision.num_hidden_layers)
    if vtype == "siglip_vision_model" and getattr(vision, "vision_use_head", True):
        # Attention-pooling head (one probe query over every token, then an MLP on it): the
        # tower computes it even though the VLM only reads hidden states.
        tower += 2.0 * tokens * d * 2 * d + _attention(1, tokens, d, 1, 1, d) - 2.0 * d * 2 * d
        tower += 4.0 * d * ffn
    return tower, tokens


def _llava_vision(config: Any, crops: int) -> tuple[float, float]:
    """Vision tower and projector FLOPs of the LLaVA families for ``crops`` tower inputs."""
    vision = config.vision_config
    tower, tokens = _vit_tower(vision)
    d = vision.hidden_size
    layer = getattr(config, "vision_feature_layer", -1)
    width = d * (len(layer) if isinstance(layer, (list, tuple)) else 1)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    selected = tokens - 1 if strategy == "default" else tokens  # "default" drops the first token
    text_hidden = config.text_config.hidden_size
    projector = 2.0 * selected * (width * text_hidden + text_hidden * text_hidden)
    return crops * tower, crops * projector


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _internvl_vision(config: Any, crops: int) -> tuple[float, float]:
    """InternViT and the pixel-shuffle projector of InternVL for ``crops`` tiles.

    Per tile: the patch embedding, the ViT layers on the patches plus CLS (q/k/v/o all
    ``d x d``, a two-matrix MLP), then the 2-layer MLP projector on the ``patches * r²`` tokens
    of width ``d / r²`` that the pixel shuffle (``downsample_ratio`` r) makes of the patches.
    """
    vision = config.vision_config
    d, ffn = vision.hidden_size, vision.intermediate_size
    (height, width), (ph, pw) = _pair(vision.image_size), _pair(vision.patch_size)
    patches = (height // ph) * (width // pw)
    channels = getattr(vision, "num_channels", 3)
    embed = 2.0 * patches * channels * ph * pw * d
    tower = embed + _vit_layers(patches + 1, d, ffn, vision.num_hidden_layers)
    factor = round(1 / config.downsample_ratio) ** 2  # tokens merged by the pixel shuffle
    tokens, wide = patches // factor, d * factor
    text_hidden = config.text_config.hidden_size
    projector = 2.0 * tokens * (wide * text_hidden + text_hidden * text_hidden)
    return crops * tower, crops * projector


def _gemma3_vision(config: Any, images: int) -> tuple[float, float]:
    """Gemma 3's SigLIP tower and projector on ``images`` images (pan-and-scan crops count as
    images): the projector average-pools (no matmul) to ``mm_tokens_per_image`` tokens, then
    projects each from the vision width to the text width."""
    tower, _ = _vit_tower(config.vision_config)
    width, text_hidden = config.vision_config.hidden_size, config.text_config.hidden_size
    projector = 2.0 * config.mm_tokens_per_image * width * text_hidden
    return images * tower, images * projector


def _llava_video(config: Any, frames: int) -> tuple[float, float]:
    """Vision tower and projector FLOPs of LLaVA-NeXT-Video / OneVision on ``frames`` frames.

    Every frame is one tower input (no anyres tiles). LLaVA-NeXT-Video pools each frame's patch
    grid by ``spatial_pool_stride`` (average or max pooling: no matmul; ``"conv"`` pooling is a
    convolution, counted in the projector) and projects the pooled tokens; OneVision projects
    every patch, then halves the grid by bilinear interpolation (no matmul).
    """
    vision = config.vision_config
    tower, tokens = _vit_tower(vision)
    d = vision.hidden_size
    layer = getattr(config, "vision_feature_layer", -1)
    width = d * (len(layer) if isinstance(layer, (list, tuple)) else 1)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    selected = tokens - 1 if strategy == "default" else tokens
    text_hidden = config.text_config.hidden_size
    if config.model_type == "llava_onevision":
        return frames * tower, frames * 2.0 * selected * (width * text_hidden + text_hidden**2)
    side = math.isqrt(selected)
    if side * side != selected:
        raise ValueError(
            f"LLaVA-NeXT-Video pools a square grid of patches per frame, but the tower selects "
            f"{selected} tokens (vision_feature_select_strategy={strategy!r}): the model cannot "
            "run this config."
        )
    stride = config.spatial_pool_stride
    pooled = (side // stride) ** 2  # AvgPool2d / MaxPool2d / Conv2d with kernel = stride
    pool = 0.0
    if config.spatial_pool_mode == "conv":
        channels = getattr(config, "spatial_pool_out_channels", None) or d
        pool = 2.0 * pooled * d * stride * stride * channels
    projector = pool + 2.0 * pooled * (width * text_hidden + text_hidden**2)
    return frames * tower, frames * projector


def _tiles(tiles_per_image: int | Sequence[int], images: int) -> int:
    """Tower inputs of ``images`` images: ``tiles_per_image`` each, or one count per image."""
    if isinstance(tiles_per_image, int) and not isinstance(tiles_per_image, bool):
        _count("tiles_per_image", tiles_per_image, minimum=1)
        return images * tiles_per_image
    counts = list(tiles_per_image)
    if len(counts) != images:
        raise ValueError(
            f"tiles_per_image has {len(counts)} counts for {images} images; give one per image."
        )
    return sum(_count("tiles_per_image[...]", count, minimum=1) for count in counts)


def _vision(
    config: Any,
    visual_tokens: int,
    images: int,
    videos: int,
    frames: int,
    tiles_per_image: int | Sequence[int],
    grids: Sequence[Sequence[int]] | None,
) -> tuple[float, float]:
    """Vision tower and projector FLOPs of every image and video of one prompt."""
    model_type = config.model_type
    if model_type in QWEN_TYPES:
        if grids is None:
            if model_type == "qwen2_5_vl":
                raise ValueError(
                    "Qwen2.5-VL's windowed vision tower depends on each image's shape: pass "
                    "grids=[(t, h, w), ...] (the image_grid_thw / video_grid_thw rows)."
                )
            if videos:
                raise ValueError(
                    "Qwen videos: pass grids=[(t, h, w), ...] (the video_grid_thw rows)."
                )
            grids = qwen_grids_from_tokens(config, visual_tokens, images)
        elif len(grids) != images + videos:
            raise ValueError(
                f"grids has {len(grids)} rows for {images} images and {videos} videos; give "
                "one (t, h, w) per image and per video."
            )
        else:
            merge = config.vision_config.spatial_merge_size
            tokens = sum(t * h * w for t, h, w in check_grids(grids, merge)) // merge**2
            if tokens != visual_tokens:
                raise ValueError(
                    f"grids make {tokens} visual tokens (t*h*w / spatial_merge_size², summed), "
                    f"not visual_tokens={visual_tokens}."
                )
        return qwen_vision_flops(config, grids)
    if grids is not None:
        raise ValueError(f"grids apply to {' / '.join(QWEN_TYPES)} only.")
    if videos and model_type not in FRAME_VIDEO_MODEL_TYPES:
        raise ValueError(
            f"{model_type!r} has no video input; videos= applies to "
            f"{' / '.join(FRAME_VIDEO_MODEL_TYPES)} (Qwen: pass the video grids)."
        )
    vis, proj = _llava_video(config, videos * frames) if videos else (0.0, 0.0)
    crops = _tiles(tiles_per_image, images)
    if model_type == "internvl":
        v, p = _internvl_vision(config, crops)
    elif model_type == "gemma3":
        v, p = _gemma3_vision(config, images)
    else:
        v, p = _llava_vision(config, crops)
    return vis + v, proj + p


def _mlp_per_token(text: Any, model_type: str) -> list[float]:
    """MLP FLOPs of one token in each decoder layer.

    Dense layers: gate, up and down projections (``6 d m``). Qwen3-VL-MoE's sparse layers: the
    router (``2 d E``) plus ``num_experts_per_tok`` routed experts of width
    ``moe_intermediate_size`` each. Every transformers experts kernel (the eager per-expert
    loop, ``batched_mm``, ``grouped_mm``) computes only the routed token-expert pairs, so that is
    what is counted, never all ``E`` experts densely; the model has no shared expert.
    """
    d, layers = text.hidden_size, text.num_hidden_layers
    dense = 6.0 * d * text.intermediate_size
    if model_type != "qwen3_vl_moe" or not getattr(text, "num_experts", 0):
        return [dense] * layers
    sparse = 2.0 * d * text.num_experts + text.num_experts_per_tok * 6.0 * d * (
        text.moe_intermediate_size
    )
    step = getattr(text, "decoder_sparse_step", 1) or 1
    dense_only = set(getattr(text, "mlp_only_layers", None) or ())
    return [
        sparse if layer not in dense_only and (layer + 1) % step == 0 else dense
        for layer in range(layers)
    ]


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
    on the eager models of every family in :data:`MODEL_TYPES`, images and videos.

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
        A VLM config with ``model_type`` in :data:`MODEL_TYPES`, ``text_config`` (Llama, Mistral,
        Qwen2/3, Qwen3-MoE or Gemma 3 style: grouped-query attention, gated three-matrix MLP or
        routed experts) and ``vision_config``.
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
    _count("visual_tokens", visual_tokens)
    _count("text_tokens", text_tokens)
    _count("images", images)
    _count("videos", videos)
    _count("frames", frames, minimum=1)
    _count("decode_steps", decode_steps)
    kept = visual_tokens if kept_visual_tokens is None else kept_visual_tokens
    _count("kept_visual_tokens", kept)
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
    _tiles(tiles_per_image, images)
    if frames != 1 and model_type not in FRAME_VIDEO_MODEL_TYPES:
        raise ValueError(f"frames applies to {' / '.join(FRAME_VIDEO_MODEL_TYPES)} only.")

    vis = proj = 0.0
    if vision and visual_tokens:
        if images + videos == 0:
            raise ValueError("visual_tokens > 0 needs images >= 1 or videos >= 1.")
        vis, proj = _vision(config, visual_tokens, images, videos, frames, tiles_per_image, grids)

    text = config.text_config
    d, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    mlp_per_layer = _mlp_per_token(text, model_type)
    mlp_per_token = sum(mlp_per_layer)
    n = kept + text_tokens
    layer_types = list(getattr(text, "layer_types", None) or ["full_attention"] * layers)
    sliding = layer_types.count("sliding_attention")
    window = getattr(text, "sliding_window", None) if sliding else None

    def lm(queries: int, keys: int) -> tuple[float, float]:
        # A decode step's sliding-window layers read only the window the cache keeps.
        narrow = keys if queries > 1 or window is None else min(keys, window)
        attn = (layers - sliding) * _attention(queries, keys, d, heads, kv_heads, head_dim)
        attn += sliding * _attention(queries, narrow, d, heads, kv_heads, head_dim)
        return attn, queries * mlp_per_token

    if layer_kept_visual_tokens is None:
        attn, mlp = lm(n, n)
    else:
        attn, mlp = _layered_prefill(
            layer_kept_visual_tokens,
            visual_tokens,
            text_tokens,
            layer_types,
            lambda index, q: (
                _attention(q, q, d, heads, kv_heads, head_dim),
                q * mlp_per_layer[index],
            ),
        )
    positions = n if logits == "all" else min(n, 1)
    prefill = FlopsBreakdown(vis, proj, attn, mlp, 2.0 * positions * d * vocab)
    d_attn = d_mlp = 0.0
    for step in range(1, decode_steps + 1):
        a, m = lm(1, n + step)
        d_attn += a
        d_mlp += m
    decode = FlopsBreakdown(0.0, 0.0, d_attn, d_mlp, 2.0 * decode_steps * d * vocab)
    return {"prefill": prefill, "decode": decode}


def _layered_prefill(counts, visual_tokens, text_tokens, layer_types, layer):
    """Prefill attention and MLP FLOPs summed over layers that see different token counts."""
    if len(counts) != len(layer_types):
        raise ValueError(
            f"layer_kept_visual_tokens has {len(counts)} entries for {len(layer_types)} layers."
        )
    attn = mlp = 0.0
    for index, count in enumerate(counts):
        _count("layer_kept_visual_tokens", count)
        if count > visual_tokens:
            raise ValueError(f"a layer keeps {count} of {visual_tokens} visual tokens.")
        a, m = layer(index, count + text_tokens)
        attn += a
        mlp += m
    return attn, mlp
