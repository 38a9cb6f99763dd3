"""lmms-eval's ``gemma3``, pruned."""

from __future__ import annotations

from lmms_eval.models.simple.gemma3 import Gemma3 as _Gemma3Simple

from .base import Pruned


class VispruneGemma3Simple(Pruned, _Gemma3Simple):
    """lmms-eval's ``gemma3`` (a simple class only: lmms-eval runs every task through it)."""

    images_per_text = True
    is_simple = True
