"""lmms-eval's ``qwen3_vl`` (Qwen3-VL, dense and MoE), pruned, with the checkpoint check its
class needs."""

from __future__ import annotations

import re
from typing import Any

from lmms_eval.models.chat.qwen3_vl import Qwen3_VL as _Qwen3_VLChat
from lmms_eval.models.simple.qwen3_vl import Qwen3_VL as _Qwen3_VLSimple

from .base import Pruned


class _Qwen3VLCheckpoint:
    """lmms-eval's ``qwen3_vl`` picks the dense or the MoE model class from the checkpoint's
    name (``A3B`` in ``Qwen3-VL-30B-A3B-Instruct``), not from its config; a mismatch would load
    the other class with freshly initialised MLPs, so it is refused before loading."""

    def _check_checkpoint(self, arguments: dict[str, Any]) -> None:
        from transformers import AutoConfig

        pretrained = str(arguments["pretrained"])
        model_type = AutoConfig.from_pretrained(pretrained).model_type
        named_moe = re.search(r"A\d+B", pretrained) is not None  # lmms-eval's own test
        if model_type.endswith("_moe") != named_moe:
            raise ValueError(
                f"{pretrained} holds a {model_type} model, but lmms-eval's qwen3_vl picks dense "
                "or mixture-of-experts from the path (A<N>B in it, as in "
                "Qwen3-VL-30B-A3B-Instruct, means MoE) and would load it as "
                f"{'MoE' if named_moe else 'dense'}, with freshly initialised weights. Name the "
                f"checkpoint directory {'without' if named_moe else 'with'} an A<N>B part."
            )


class VispruneQwen3_VL(_Qwen3VLCheckpoint, Pruned, _Qwen3_VLChat):
    """lmms-eval's ``qwen3_vl`` (Qwen3-VL, dense and MoE), pruned; chat tasks."""

    is_simple = False


class VispruneQwen3_VLSimple(_Qwen3VLCheckpoint, Pruned, _Qwen3_VLSimple):
    """lmms-eval's ``qwen3_vl``, pruned; simple tasks (``--force_simple``, loglikelihood)."""

    is_simple = True
