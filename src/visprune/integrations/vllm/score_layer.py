"""Which CLIP layer scores an image for the methods that read the vision tower's CLS attention
(VisPruner, VisionZip), decided from the model config alone, and the refusal where none does.

The same rule as ``visprune.apply`` (:mod:`visprune.functional.score_layer`); only a CLIP tower
(CLS token) has a CLS row. Imports
no vLLM code, so the engine-start check runs (and is tested) anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...functional.score_layer import score_layer_index, score_settings
from ...methods import Method
from ...methods.context import VISION_NEEDS
from ...registry import METHODS

#: Architectures whose vLLM model code the plugin scores with the CLS attention.
SCORED_ARCHITECTURES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")


@dataclass(frozen=True)
class ScoreLayer:
    """``index`` of the encoder layer whose attention scores the tokens; ``reads_embeddings``:
    the projector reads that layer's input (the embeddings output), not its output."""

    index: int
    reads_embeddings: bool


def score_layer(hf_config: Any) -> ScoreLayer | None:
    """The scoring layer of a LLaVA-style config, or ``None`` where the tower has no CLS row."""
    vision = getattr(hf_config, "vision_config", None)
    if getattr(vision, "model_type", None) != "clip_vision_model":
        return None
    found = score_layer_index(
        getattr(hf_config, "vision_feature_layer", None),
        getattr(hf_config, "vision_feature_select_strategy", None),
        vision.num_hidden_layers,
    )
    return None if found is None else ScoreLayer(*found)


def needs_scores(method: Method) -> list[str]:
    """The vision-tower scores ``method`` requires (sorted), empty for most methods."""
    return sorted(method.requires & VISION_NEEDS.keys())


def check_scores(architecture: str, hf_config: Any, method: Method) -> None:
    """Raise ``ValueError`` when ``method`` needs CLS scores that ``architecture`` cannot supply;
    the message is ``visprune.apply``'s for the same model."""
    missing = needs_scores(method)
    if not missing and not method.merges:
        return
    if architecture in SCORED_ARCHITECTURES and score_layer(hf_config) is not None:
        return
    missing = missing or sorted(VISION_NEEDS)
    lines = "; ".join(
        f"{need} ({VISION_NEEDS[need]}) is needed by "
        f"{', '.join(n for n in METHODS.names() if need in METHODS[n].requires)}"
        for need in missing
    )
    model_type = getattr(hf_config, "model_type", architecture)
    raise ValueError(
        f"visprune: {method.name} cannot run on {model_type}: it needs {', '.join(missing)}, "
        f"which this model cannot supply ({score_settings(hf_config)}). {lines}. Choose a method "
        "without these needs (e.g. divprune, cdpruner)."
    )
