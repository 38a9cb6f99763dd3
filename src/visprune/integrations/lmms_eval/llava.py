"""lmms-eval's ``llava_hf`` (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision), pruned."""

from __future__ import annotations

from lmms_eval.models.chat.llava_hf import LlavaHf as _LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf as _LlavaHfSimple

from .base import Pruned


class VispruneLlavaHf(Pruned, _LlavaHfChat):
    """lmms-eval's ``llava_hf`` (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision), pruned; chat tasks."""

    processor_attribute = "_image_processor"
    is_simple = False


class VispruneLlavaHfSimple(Pruned, _LlavaHfSimple):
    """lmms-eval's ``llava_hf``, pruned; simple tasks (``--force_simple``, loglikelihood)."""

    processor_attribute = "_image_processor"
    is_simple = True
