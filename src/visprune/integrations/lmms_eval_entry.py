"""What lmms-eval's ``lmms_eval.models`` entry point loads: the names of visprune's wrappers.

lmms-eval reads this while its own model registry is still being built, so this module imports
nothing heavy; the wrapper classes in :mod:`visprune.integrations.lmms_eval` are imported by
lmms-eval only when a run asks for one of these names.
"""

from __future__ import annotations

_WRAPPERS = "visprune.integrations.lmms_eval"

#: model name -> (class for lmms-eval's "simple" tasks, class for its chat tasks, aliases); a
#: family whose lmms-eval class exists in one variant only has None for the other.
MODELS: dict[str, tuple[str | None, str | None, tuple[str, ...]]] = {
    "visprune_llava_hf": (
        "VispruneLlavaHfSimple",
        "VispruneLlavaHf",
        ("visprune_llava_next", "visprune_llava_onevision"),
    ),
    "visprune_qwen2_5_vl": ("VispruneQwen2_5_VLSimple", "VispruneQwen2_5_VL", ()),
    "visprune_qwen3_vl": ("VispruneQwen3_VLSimple", "VispruneQwen3_VL", ()),
    "visprune_gemma3": ("VispruneGemma3Simple", None, ()),
    "visprune_internvl_hf": (None, "VispruneInternVLHf", ()),
}


def models() -> list:
    """One ``ModelManifest`` per wrapper (the payload of the ``lmms_eval.models`` entry point).

    Chat tasks (the lmms-eval default) get the chat class; ``--force_simple`` picks the simple
    one, which lmms-eval needs for loglikelihood tasks.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(
            model_id=name,
            simple_class_path=f"{_WRAPPERS}.{simple}" if simple else None,
            chat_class_path=f"{_WRAPPERS}.{chat}" if chat else None,
            aliases=aliases,
        )
        for name, (simple, chat, aliases) in MODELS.items()
    ]
