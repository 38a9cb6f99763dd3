"""lmms-eval's ``internvl_hf`` (InternVL3 / 3.5 ``-hf`` checkpoints), pruned."""

from __future__ import annotations

from typing import Any

from lmms_eval.models.chat.internvl_hf import InternVLHf as _InternVLHfChat

from .base import Pruned


class VispruneInternVLHf(Pruned, _InternVLHfChat):
    """lmms-eval's ``internvl_hf`` (InternVL3 / 3.5 ``-hf`` checkpoints), pruned; chat tasks.

    lmms-eval's class asserts ``batch_size=1`` (it generates request by request); it loads with
    that, and visprune's batched generation then uses the ``batch_size`` asked for.
    """

    is_simple = False

    def __init__(self, batch_size: int | str = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_size_per_gpu = int(batch_size)
