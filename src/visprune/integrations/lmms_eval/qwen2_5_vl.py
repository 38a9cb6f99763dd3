"""lmms-eval's ``qwen2_5_vl``, pruned."""

from __future__ import annotations

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VLChat
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VLSimple

from .base import Pruned


class VispruneQwen2_5_VL(Pruned, _Qwen2_5_VLChat):
    """lmms-eval's ``qwen2_5_vl``, pruned; chat tasks."""

    is_simple = False


class VispruneQwen2_5_VLSimple(Pruned, _Qwen2_5_VLSimple):
    """lmms-eval's ``qwen2_5_vl``, pruned; simple tasks (``--force_simple``, loglikelihood)."""

    is_simple = True
