"""Vision-tower scores for the methods that need them: the CLS query's attention row and the key
projections at the selected vision layer (VisPruner, VisionZip).

They are recomputed from that layer's own ``q_proj`` / ``k_proj`` on the input of its attention,
``softmax(q_cls kᵀ · scale)`` per head, so the tower keeps its attention backend (SDPA, flash):
no eager attention, no attention weights requested. The layer's output hidden states come with
them (VisionZip keeps the CLS token and merges hidden states).

Which layer (:func:`visprune.functional.score_layer.score_layer_index`, the rule the vLLM plugin
shares): the one whose output is ``hidden_states[vision_feature_layer]`` (``layers[L]`` for
``L < 0``, ``layers[L - 1]`` for ``L > 0``), as published, with the ``"default"`` select strategy
(CLS dropped before the projector, so the patches are the candidates). Where the selected
features are the embeddings output (``hidden_states[0]``, e.g. the bundled demo model's one-layer
tower), no attention produced them: the scores then come from the first layer's attention, which
reads them, and the hidden states are that layer's input (the published code cannot run there).

Only towers with a CLS token have a CLS row: CLIP (LLaVA-1.5, LLaVA-NeXT, LLaVA-NeXT-Video).
SigLIP (OneVision, Gemma 3), Qwen's ViT and InternViT's pixel-shuffled tokens have none, and
``apply`` refuses methods that need it there.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import compat
from ..functional.cls_scores import cls_scores
from ..functional.score_layer import score_layer_index


@dataclass(frozen=True)
class ScoreLayer:
    """Where the scores come from: an encoder layer, and whether the selected hidden states are
    its input (the embeddings output) or its output."""

    layer: nn.Module
    hidden_from_input: bool = False


def clip_score_layer(tower: Any, feature_layer: Any, strategy: Any) -> ScoreLayer | None:
    """The encoder layer of a CLS-token tower whose attention scores the projector input (the
    layer whose output it reads; the first layer when it reads the embeddings), or ``None``.

    Parameters
    ----------
    tower : nn.Module
        The vision tower (``CLIPVisionModel`` or its ``vision_model``).
    feature_layer : int or list of int
        ``config.vision_feature_layer``; several layers (concatenated features) have no single
        CLS row, so they give ``None``.
    strategy : str
        ``config.vision_feature_select_strategy``; only ``"default"`` (CLS dropped) is supported.
    """
    model = getattr(tower, "vision_model", tower)
    embeddings = getattr(model, "embeddings", None)
    if getattr(embeddings, "class_embedding", None) is None:
        return None  # no CLS token (SigLIP and others)
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if layers is None:
        return None
    found = score_layer_index(feature_layer, strategy, len(layers))
    if found is None:
        return None
    index, reads_embeddings = found
    layer = layers[index]
    attention = getattr(layer, "self_attn", None)
    needed = ("q_proj", "k_proj", "num_heads", "head_dim", "scale")
    if attention is None or not all(hasattr(attention, name) for name in needed):
        return None
    return ScoreLayer(layer, hidden_from_input=reads_embeddings)


class ScoreCapture:
    """Hooks on one encoder layer that hand its scores to ``record`` while ``active()``.

    ``record`` receives a dict of ``cls_attention`` ``(B, H, T)`` float32 (the CLS query's
    attention row, CLS column included), ``keys`` ``(B, T, hd)`` float32 (key projections
    averaged over heads) and ``hidden`` ``(B, T, D)`` (the selected hidden states), ``B`` crops or
    images of ``T`` tokens with the CLS token at 0.
    """

    def __init__(self, source: ScoreLayer, active, record) -> None:
        self.active = active
        self.record = record
        self.hidden_from_input = source.hidden_from_input
        # Per thread: one pruned model may encode images in several threads at once.
        self._local = threading.local()
        layer = source.layer
        self.hooks = [
            layer.register_forward_pre_hook(self._before_layer, with_kwargs=True),
            layer.self_attn.register_forward_pre_hook(self._before_attention, with_kwargs=True),
            layer.register_forward_hook(self._after_layer),
        ]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()

    def _before_layer(self, module, args, kwargs) -> None:
        if self.hidden_from_input and self.active():
            states = kwargs.get("hidden_states", args[0] if args else None)
            self._local.input = states.detach()

    def _before_attention(self, module, args, kwargs) -> None:
        if not self.active():
            return
        states = kwargs.get("hidden_states", args[0] if args else None)
        batch, length, _ = states.shape
        heads, width = module.num_heads, module.head_dim
        with torch.no_grad():
            queries = module.q_proj(states[:, :1]).view(batch, 1, heads, width)
            keys = module.k_proj(states).view(batch, length, heads, width)
            attention, mean_keys = cls_scores(queries, keys, float(module.scale))
            self._local.pending = {"cls_attention": attention, "keys": mean_keys}

    def _after_layer(self, module, args, output) -> None:
        pending = getattr(self._local, "pending", None)
        given = getattr(self._local, "input", None)
        self._local.pending = self._local.input = None
        if pending is None or not self.active():
            return
        if self.hidden_from_input:
            pending["hidden"] = given
        else:
            pending["hidden"] = compat.layer_hidden_states(output).detach()
        self.record(pending)


def per_image_scores(scores: dict[str, Tensor], image: int) -> dict[str, Tensor]:
    """One image's per-patch scores, CLS removed: ``cls_attention`` ``(n, H)``, ``vision_keys``
    ``(n, hd)``, and ``cls_state`` ``(D,)``."""
    return {
        "cls_attention": scores["cls_attention"][image, :, 1:].T,
        "vision_keys": scores["keys"][image, 1:],
        "cls_state": scores["hidden"][image, 0],
    }


def packed_scores(scores: dict[str, Tensor], pack, crops: list[int]) -> list[dict[str, Tensor]]:
    """Per image of several crops (LLaVA-NeXT anyres): the patch scores packed like its features.

    Each crop's patches carry the attention of that crop's own CLS token (every crop runs
    through the tower alone); ``pack`` arranges them as the model arranges the crops' features
    (base crop, then the unpadded tile grid), so token ``i`` of the image's candidates has the
    scores of the patch it came from. The image's CLS state is its base crop's.

    Parameters
    ----------
    scores : dict
        The captured scores of all crops of the call, ``(C, ...)``.
    pack : callable
        ``pack(list of (crops_i, T - 1, c)) -> list of (n_i, c)``, the family's packing.
    crops : list of int
        Crops per image, in order.
    """
    attention = scores["cls_attention"][:, :, 1:].transpose(1, 2)  # (C, T - 1, H)
    keys = scores["keys"][:, 1:]
    heads = attention.shape[-1]
    joined = torch.cat([attention, keys], dim=-1)
    packed = pack(list(joined.split(crops, dim=0)))
    firsts = torch.tensor([0, *crops[:-1]]).cumsum(0).tolist()
    return [
        {
            "cls_attention": image[:, :heads],
            "vision_keys": image[:, heads:],
            "cls_state": scores["hidden"][first, 0],
        }
        for image, first in zip(packed, firsts, strict=True)
    ]
