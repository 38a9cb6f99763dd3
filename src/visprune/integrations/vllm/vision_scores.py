"""The CLS attention, averaged keys and hidden states of vLLM's CLIP tower at the layer that
scores the projector input, for VisPruner and VisionZip (as ``visprune.apply`` captures them).

vLLM's CLIP attention has one merged ``qkv_proj`` sharded by heads across tensor-parallel ranks,
so the scores are recomputed from that layer's attention input through its ``qkv_proj``, the
local heads of the query and keys are gathered from every rank (so every rank selects the same
tokens), and :func:`visprune.functional.cls_scores` does the float32 math, heads first, exactly
as in transformers. vLLM builds the tower only up to the feature layer; where the projector reads
the embeddings output (a tower with no layer before it), the first layer that would read them
is not built, so its ``layer_norm1`` and ``q``/``k``/``v`` projections are built here and loaded
from the checkpoint. Imports vLLM (engine processes only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from vllm.distributed import tensor_model_parallel_all_gather
from vllm.model_executor.layers.linear import QKVParallelLinear

from ...functional.cls_scores import cls_scores
from .score_layer import score_layer

#: Checkpoint names of the first encoder layer's parts the scores need (both Hub layouts).
_FIRST_LAYER = re.compile(
    r"vision_model\.encoder\.layers\.0\.(layer_norm1|self_attn\.([qkv])_proj)\.(weight|bias)$"
)


def qkv_scores(qkv_proj: nn.Module, states: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(cls_attention (B, H, T), mean keys (B, T, hd))`` of ``states`` ``(B, T, D)`` (the
    attention input, CLS at 0) through a CLIP ``qkv_proj``, all heads on every rank."""
    batch, length, _ = states.shape
    heads, width = qkv_proj.num_heads, qkv_proj.head_size  # this rank's heads
    with torch.no_grad():
        projected, _ = qkv_proj(states)
        queries, keys, _ = projected.split([heads * width] * 3, dim=-1)
        queries = queries[:, :1].reshape(batch, 1, heads, width)
        keys = keys.reshape(batch, length, heads, width)
        if qkv_proj.tp_size > 1:  # heads are sharded in rank order
            queries = tensor_model_parallel_all_gather(queries.contiguous(), dim=2)
            keys = tensor_model_parallel_all_gather(keys.contiguous(), dim=2)
        return cls_scores(queries, keys, scale)


class ClsScores(nn.Module):
    """Scores of a vLLM LLaVA-style model's CLIP tower; :meth:`encode` runs the tower.

    Parameters
    ----------
    hf_config : LlavaConfig or LlavaNextConfig
        With a CLIP tower, one ``vision_feature_layer`` and the ``"default"`` strategy (checked
        at engine start).
    vision_tower : vLLM ``CLIPVisionModel``
    prefix : str
        This module's name in the model (for the parameters it loads itself).
    """

    def __init__(self, hf_config, vision_tower: nn.Module, prefix: str) -> None:
        super().__init__()
        layer = score_layer(hf_config)
        if layer is None:  # refused at engine start already (guard.py)
            raise ValueError("visprune: this model's vision tower has no CLS attention.")
        vision = hf_config.vision_config
        self.reads_embeddings = layer.reads_embeddings
        self.scale = (vision.hidden_size // vision.num_attention_heads) ** -0.5
        self._pending: list[tuple[Tensor, Tensor]] = []
        self.prefix = prefix
        if self.reads_embeddings:
            self.layer_norm1 = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
            self.qkv_proj = QKVParallelLinear(
                hidden_size=vision.hidden_size,
                head_size=vision.hidden_size // vision.num_attention_heads,
                total_num_heads=vision.num_attention_heads,
                prefix=f"{prefix}.qkv_proj",
            )
            return
        attention = vision_tower.vision_model.encoder.layers[layer.index].self_attn
        # A hook, not an attribute: the layer is the tower's, not a part of this module.
        self._hook = attention.register_forward_pre_hook(self._before_attention, with_kwargs=True)

    def _before_attention(self, module, args, kwargs) -> None:
        states = kwargs.get("hidden_states", args[0] if args else None)
        self._pending.append(qkv_scores(module.qkv_proj, states, float(module.scale)))

    def encode(self, vision_tower: nn.Module, pixels: Tensor, **kwargs) -> tuple[Tensor, dict]:
        """Run the tower on ``pixels`` ``(B, 3, h, w)``.

        Returns
        -------
        features : Tensor
            ``(B, T - 1, D)`` the projector input (CLS dropped: the ``"default"`` strategy).
        scores : dict
            ``cls_attention`` ``(B, H, T)`` and ``keys`` ``(B, T, hd)`` float32, ``hidden``
            ``(B, T, D)`` the selected layer's hidden states, CLS at 0.
        """
        full: list[Tensor] = []

        def default_strategy(states: Tensor) -> Tensor:
            full.append(states)
            return states[:, 1:]

        self._pending.clear()
        features = vision_tower(pixels, feature_select_strategy=default_strategy, **kwargs)
        hidden = full[0]
        if self.reads_embeddings:
            attention, keys = qkv_scores(self.qkv_proj, self.layer_norm1(hidden), self.scale)
        else:
            attention, keys = self._pending.pop()
        self._pending.clear()
        return features, {"cls_attention": attention, "keys": keys, "hidden": hidden}

    def take_weights(
        self, weights: Iterable[tuple[str, Tensor]], loaded: set[str]
    ) -> Iterable[tuple[str, Tensor]]:
        """Pass ``weights`` on, loading the first encoder layer's ``layer_norm1`` and
        projections into this module on the way (where it built them), their names into
        ``loaded``."""
        for name, tensor in weights:
            match = _FIRST_LAYER.search(name) if self.reads_embeddings else None
            if match is not None:
                _, shard, kind = match.groups()
                if shard is None:
                    getattr(self.layer_norm1, kind).data.copy_(tensor)
                    loaded.add(f"{self.prefix}.layer_norm1.{kind}")
                else:
                    param = getattr(self.qkv_proj, kind)
                    param.weight_loader(param, tensor, shard)
                    loaded.add(f"{self.prefix}.qkv_proj.{kind}")
            yield name, tensor


def per_image(scores: dict[str, Tensor], image: int) -> dict[str, Tensor]:
    """One image's (crop's) candidate scores, CLS removed: ``cls_attention`` ``(n, H)``,
    ``vision_keys`` ``(n, hd)``, ``cls_state`` ``(D,)``."""
    return {
        "cls_attention": scores["cls_attention"][image, :, 1:].T,
        "vision_keys": scores["keys"][image, 1:],
        "cls_state": scores["hidden"][image, 0],
    }


class ScoredModelMixin:
    """For a vLLM LLaVA-style model: ``self.visprune_scores`` (a :class:`ClsScores`) when the
    served method reads the CLS attention, and the weights it loads itself."""

    def _init_scores(self) -> None:
        self.visprune_scores = None
        if self.visprune is not None and self.visprune.uses_vision_scores:
            self.visprune_scores = ClsScores(self.config, self.vision_tower, "visprune_scores")

    def load_weights(self, weights):
        if self.visprune_scores is None:
            return super().load_weights(weights)
        own: set[str] = set()
        loaded = super().load_weights(self.visprune_scores.take_weights(weights, own))
        return loaded | own
