"""Which vision-encoder layer scores the tokens for the methods that read the CLS attention
(VisPruner, Zhang et al., arXiv 2412.01818; VisionZip, Yang et al., arXiv 2412.04467), read from a
LLaVA-style config alone, and how a config that has none is described in the refusal.

The rule, as published: the layer whose output is the projector input
(``hidden_states[vision_feature_layer]``: ``layers[L]`` for ``L < 0``, ``layers[L - 1]`` for
``L > 0``), with the ``"default"`` select strategy (CLS dropped, so the patches are the
candidates). Where the projector reads the embeddings output (``hidden_states[0]``) no attention
produced it: the first layer's attention, which reads it, scores then. ``visprune.apply`` and the
vLLM plugin both decide with it.
"""

from __future__ import annotations

from typing import Any


def score_layer_index(feature_layer: Any, strategy: Any, layers: int) -> tuple[int, bool] | None:
    """The scoring layer of a tower with ``layers`` encoder layers, or ``None`` where it has no
    single CLS row.

    Parameters
    ----------
    feature_layer : int or list of int
        ``config.vision_feature_layer``; several layers (concatenated features) have no single
        CLS row.
    strategy : str
        ``config.vision_feature_select_strategy``; only ``"default"`` has one.
    layers : int
        The tower's number of encoder layers.

    Returns
    -------
    (index, reads_embeddings) or None
        ``index`` in ``[0, layers)``; ``reads_embeddings``: the projector reads that layer's
        input (the embeddings output), not its output.
    """
    if isinstance(feature_layer, bool) or not isinstance(feature_layer, int):
        return None
    if strategy != "default":
        return None
    if feature_layer in (0, -layers - 1):
        return 0, True
    index = feature_layer if feature_layer < 0 else feature_layer - 1
    if not -layers <= index < layers:
        return None
    return index % layers, False


def score_settings(config: Any) -> str:
    """The settings of ``config`` that decide the scoring layer, for a refusal where there is
    none: its vision tower, and (LLaVA-style configs) its feature layer and select strategy with
    what they would need to be."""
    tower = getattr(getattr(config, "vision_config", None), "model_type", "its vision tower")
    settings = f"vision tower {tower}"
    if getattr(config, "vision_feature_layer", None) is not None:
        settings += (
            f", vision_feature_layer {config.vision_feature_layer!r}, select strategy "
            f"{getattr(config, 'vision_feature_select_strategy', None)!r}; a single layer of a "
            "CLS-token tower with the 'default' strategy is needed"
        )
    return settings
