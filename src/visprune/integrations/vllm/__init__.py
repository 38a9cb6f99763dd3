"""Serve pruned models with vLLM.

Installed with ``pip install visprune[vllm]``; vLLM loads :func:`register` through the
``vllm.general_plugins`` entry point in every one of its processes. Pruning is turned on per
model by an override, and a model served without it runs vLLM's own code unchanged::

    vllm serve llava-hf/llava-1.5-7b-hf \\
        --hf-overrides '{"visprune": {"method": "divprune", "budget": 64}}'

    LLM(model, hf_overrides={"visprune": {"method": "divprune", "budget": 64}})

Each image then gets ``budget`` placeholder tokens in the prompt (vLLM sizes them before
encoding), and the model's multimodal embedding returns the rows the method keeps, so the
language model, its KV cache and the reported prompt length only ever hold the kept tokens.
Text-conditioned methods read the prompt's tokens after the last image, which travel with each
image (and are part of its cache identity, so cached encodings are never reused across prompts).

Served: ``LlavaForConditionalGeneration`` with a CLIP or SigLIP tower (LLaVA-1.5 and its
relatives), ``LlavaNextForConditionalGeneration`` (LLaVA-NeXT: every method; "vision"-stage
ones score each packed token's projector input, the newlines always kept),
``Qwen2_5_VLForConditionalGeneration`` and ``Qwen3VLForConditionalGeneration`` (images and
video, the budget per video temporal patch group, kept tokens at their M-RoPE positions: see
:mod:`.mrope`), ``InternVLForConditionalGeneration`` (InternVL 3 / 3.5 ``-hf``: images and
video), ``Gemma3ForConditionalGeneration`` and ``LlavaOnevisionForConditionalGeneration``
(images and video; "vision"-stage ones score the projector input, packed or pooled as vLLM
packs the tokens). VisPruner and VisionZip read the
CLIP tower's CLS attention (:mod:`.vision_scores`), so only LLaVA and LLaVA-NeXT with a CLIP
tower serve them. An override on any other
architecture, an unknown method or a bad budget raises at engine start.
"""

from __future__ import annotations

#: vLLM architecture name -> the visprune class served under it.
SERVED_ARCHITECTURES = {
    "LlavaForConditionalGeneration": (
        "visprune.integrations.vllm.llava:PrunedLlavaForConditionalGeneration"
    ),
    "LlavaNextForConditionalGeneration": (
        "visprune.integrations.vllm.llava_next:PrunedLlavaNextForConditionalGeneration"
    ),
    "Qwen2_5_VLForConditionalGeneration": (
        "visprune.integrations.vllm.qwen2_5_vl:PrunedQwen2_5_VLForConditionalGeneration"
    ),
    "Qwen3VLForConditionalGeneration": (
        "visprune.integrations.vllm.qwen3_vl:PrunedQwen3VLForConditionalGeneration"
    ),
    "InternVLForConditionalGeneration": (
        "visprune.integrations.vllm.internvl:PrunedInternVLForConditionalGeneration"
    ),
    "Gemma3ForConditionalGeneration": (
        "visprune.integrations.vllm.gemma3:PrunedGemma3ForConditionalGeneration"
    ),
    "LlavaOnevisionForConditionalGeneration": (
        "visprune.integrations.vllm.llava_onevision:PrunedLlavaOnevisionForConditionalGeneration"
    ),
}


#: The position mode of the kept tokens, where not "compact" (consecutive positions): Qwen-VL
#: kept tokens keep their M-RoPE positions, as ``visprune.apply`` does (its only mode there).
SERVED_POSITIONS = {
    "Qwen2_5_VLForConditionalGeneration": "original",
    "Qwen3VLForConditionalGeneration": "original",
}


def register() -> None:
    """vLLM plugin entry point: serve visprune's model classes, and refuse unserved overrides."""
    from vllm import ModelRegistry

    from .guard import guard_registry

    for architecture, target in SERVED_ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, target)
    guard_registry(ModelRegistry)
