"""Which CLIP layer scores an image for the methods that read the vision tower's CLS attention
(VisPruner, VisionZip), decided from the model config alone, and the refusal where none does.

The same rule as ``visprune.apply``: the layer whose output is the projector input
(``hidden_states[vision_feature_layer]``), or the first layer when the projector reads the
embeddings output (no attention produced them; the first layer's attention reads them). Only a
CLIP tower (CLS token), one feature layer and the ``"default"`` strategy have a CLS row. Imports
no vLLM code, so the engine-start check runs (and is tested) anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    feature_layer = getattr(hf_config, "vision_feature_layer", None)
    if isinstance(feature_layer, bool) or not isinstance(feature_layer, int):
        return None
    if getattr(hf_config, "vision_feature_select_strategy", None) != "default":
        return None
    layers = vision.num_hidden_layers
    if feature_layer in (0, -layers - 1):
        return ScoreLayer(0, True)
    index = feature_layer if feature_layer < 0 else feature_layer - 1
    if not -layers <= index < layers:
        return None
    return ScoreLayer(index % layers, False)


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
    tower = getattr(getattr(hf_config, "vision_config", None), "model_type", "its vision tower")
    settings = f"vision tower {tower}"
    if getattr(hf_config, "vision_feature_layer", None) is not None:
        settings += (
            f", vision_feature_layer {hf_config.vision_feature_layer!r}, select strategy "
            f"{getattr(hf_config, 'vision_feature_select_strategy', None)!r}; a single layer of "
            "a CLS-token tower with the 'default' strategy is needed"
        )
    lines = "; ".join(
        f"{need} ({VISION_NEEDS[need]}) is needed by "
        f"{', '.join(n for n in METHODS.names() if need in METHODS[n].requires)}"
        for need in missing
    )
    model_type = getattr(hf_config, "model_type", architecture)
    raise ValueError(
        f"visprune: {method.name} cannot run on {model_type}: it needs {', '.join(missing)}, "
        f"which this model cannot supply ({settings}). {lines}. Choose a method without these "
        "needs (e.g. divprune, cdpruner)."
    )
