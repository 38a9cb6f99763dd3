"""Analytic prefill FLOPs: the formula the DivPrune / OTPrune papers report (pure math).

``F(n) = T (4 n d² + 2 n² d + 2 n d m)`` for a decoder of ``T`` layers, hidden width ``d`` and FFN
width ``m`` on ``n`` tokens: the q/k/v/o projections, the attention scores and weighted sum, and a
two-matrix FFN. Each term is a count of multiply-adds (``4 n d²`` is the four ``d x d``
projections of ``n`` tokens): half the FLOPs of those terms when a multiply-add counts as two
FLOPs, as :func:`model_flops` counts them.

:func:`model_flops` is the exact count for a real Hugging Face VLM, read from its config: vision
tower, projector, grouped-query attention, the gated three-matrix MLP and the ``lm_head``, for
prefill and for decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
#: VLM ``model_type`` values whose language model :func:`model_flops` counts.
MODEL_TYPES = (
    "llava",
    "llava_next",
    "llava_next_video",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "internvl",
    "gemma3",
)
#: Those whose vision tower and projector it also counts.
VISION_MODEL_TYPES = (
    "llava",
    "llava_next",
    "llava_next_video",
    "llava_onevision",
    "qwen2_vl",
    "internvl",
    "gemma3",
)
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
        Multimodal projector (LLaVA, Gemma 3) or patch merger (Qwen2-VL).
    attention : float
        Language model: q/k/v/o projections plus the attention scores and weighted sum.
    mlp : float
        Language model: gate, up and down projections.
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


def _qwen2_vl_vision(config: Any, visual_tokens: int, images: int) -> tuple[float, float]:
    """Qwen2-VL ViT and patch merger on ``images`` single-frame images."""
    vision = config.vision_config
    merge = vision.spatial_merge_size
    if visual_tokens % images:
        raise ValueError(
            f"visual_tokens ({visual_tokens}) must split evenly over images ({images})."
        )
    patches = visual_tokens // images * merge * merge  # t * h * w with t = 1 per image
    d = vision.embed_dim
    ffn = int(d * vision.mlp_ratio)
    channels = getattr(vision, "in_channels", 3)
    kernel = channels * vision.temporal_patch_size * vision.patch_size**2
    tower = 2.0 * patches * kernel * d + _vit_layers(patches, d, ffn, vision.depth)
    wide = d * merge * merge
    merger = 2.0 * (visual_tokens // images) * (wide * wide + wide * vision.hidden_size)
    return images * tower, images * merger


def model_flops(
    config: Any,
    visual_tokens: int,
    text_tokens: int,
    *,
    images: int = 1,
    decode_steps: int = 0,
    kept_visual_tokens: int | None = None,
    tiles_per_image: int = 1,
    logits: str = "last",
    vision: bool = True,
    layer_kept_visual_tokens: Sequence[int] | None = None,
) -> dict[str, FlopsBreakdown]:
    """Exact matmul FLOPs of a Hugging Face VLM, read from its config (pure math).

    Counts every matrix product, a multiply-add as two FLOPs, and ignores norms, activations,
    softmax, rotary embeddings, bias adds and residual adds (all linear in the token count and
    small). Attention scores and the weighted sum are counted over the full ``n x n`` matrix in
    prefill, as the dense (eager / SDPA math) kernels compute it, causal mask or not.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        A VLM config with ``model_type`` in :data:`MODEL_TYPES`, ``text_config`` (Llama, Mistral,
        Qwen2 or Gemma 3 style: grouped-query attention, gated three-matrix MLP) and
        ``vision_config``.
    visual_tokens : int
        Visual tokens the projector emits for the whole prompt (all images), before pruning.
        For Qwen2-VL, ``t*h*w / spatial_merge_size**2`` summed over images (single-frame images:
        the ViT cost is derived from it). For the LLaVA families, Gemma 3
        (``mm_tokens_per_image`` per image) and InternVL (per tile) the vision and projector cost
        comes from the config (``image_size``, ``patch_size``) per crop, not from this count.
    text_tokens : int
        Text tokens of the prompt (system prompt and placeholders' neighbours included).
    images : int
        Images in the prompt; the vision tower runs once per image (per tile, see below).
    decode_steps : int
        Tokens decoded after prefill; step ``t`` (1-based) feeds one token against a cache of
        ``n + t - 1`` entries, so it attends over ``n + t`` keys (sliding-window layers, such
        as five in six of Gemma 3's, over at most ``sliding_window``: what the dynamic cache
        keeps).
    kept_visual_tokens : int, optional
        Visual tokens left after pruning; the language model sees ``kept + text_tokens`` tokens.
        Defaults to ``visual_tokens`` (no pruning). The vision tower and projector always run on
        every patch.
    tiles_per_image : int
        LLaVA-NeXT / OneVision: crops the vision tower encodes per image, base image included
        (what ``image_size_to_num_patches`` returns). InternVL: tiles per image, thumbnail
        included (the processor's ``num_patches``). Must be 1 for the other families.
    logits : {"last", "all"}
        Prefill ``lm_head`` positions: ``"last"`` (what ``generate`` does with
        ``logits_to_keep=1``) or ``"all"`` (a plain forward). Decode steps always project one.
    vision : bool
        Count the vision tower and projector. Pass ``False`` for a type outside
        :data:`VISION_MODEL_TYPES` (Qwen2.5-VL's windowed ViT) to count the language model only.
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

    Raises
    ------
    ValueError
        A negative or non-int count, an unknown ``logits`` value or an unsupported model type.
    """
    _count("visual_tokens", visual_tokens)
    _count("text_tokens", text_tokens)
    _count("images", images)
    _count("decode_steps", decode_steps)
    _count("tiles_per_image", tiles_per_image, minimum=1)
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

    vis = proj = 0.0
    if vision and visual_tokens:
        if images == 0:
            raise ValueError("visual_tokens > 0 needs images >= 1.")
        if model_type not in VISION_MODEL_TYPES:
            raise ValueError(
                f"vision FLOPs of {model_type!r} are not supported; supported: "
                f"{', '.join(VISION_MODEL_TYPES)}. Pass vision=False to count the language "
                "model only."
            )
        if model_type == "qwen2_vl":
            vis, proj = _qwen2_vl_vision(config, visual_tokens, images)
        elif model_type == "internvl":
            vis, proj = _internvl_vision(config, images * tiles_per_image)
        elif model_type == "gemma3":
            vis, proj = _gemma3_vision(config, images)
        else:
            vis, proj = _llava_vision(config, images * tiles_per_image)

    text = config.text_config
    d, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    ffn = text.intermediate_size
    n = kept + text_tokens
    layer_types = list(getattr(text, "layer_types", None) or ["full_attention"] * layers)
    sliding = layer_types.count("sliding_attention")
    window = getattr(text, "sliding_window", None) if sliding else None

    def lm(queries: int, keys: int) -> tuple[float, float]:
        # A decode step's sliding-window layers read only the window the cache keeps.
        narrow = keys if queries > 1 or window is None else min(keys, window)
        attn = (layers - sliding) * _attention(queries, keys, d, heads, kv_heads, head_dim)
        attn += sliding * _attention(queries, narrow, d, heads, kv_heads, head_dim)
        return attn, layers * 6.0 * queries * d * ffn

    if layer_kept_visual_tokens is None:
        attn, mlp = lm(n, n)
    else:
        attn, mlp = _layered_prefill(
            layer_kept_visual_tokens,
            visual_tokens,
            text_tokens,
            layer_types,
            lambda q: (_attention(q, q, d, heads, kv_heads, head_dim), 6.0 * q * d * ffn),
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
    for count in counts:
        _count("layer_kept_visual_tokens", count)
        if count > visual_tokens:
            raise ValueError(f"a layer keeps {count} of {visual_tokens} visual tokens.")
        a, m = layer(count + text_tokens)
        attn += a
        mlp += m
    return attn, mlp
