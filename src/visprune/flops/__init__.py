"""FLOPs of multimodal LLMs: the papers' formula and the exact count of a real VLM (pure math).

* :mod:`~visprune.flops.paper`: the analytic prefill formula DivPrune / OTPrune report, and their
  efficiency table (:func:`prefill_flops`, :func:`paper_table_row`).
* :mod:`~visprune.flops.model`: :func:`model_flops`, the exact matmul count of a Hugging Face VLM
  read from its config, with one module per family for the vision part
  (:mod:`~visprune.flops.llava`, :mod:`~visprune.flops.qwen`, :mod:`~visprune.flops.internvl`,
  :mod:`~visprune.flops.gemma3`) and :mod:`~visprune.flops.language` for the decoder.
* :mod:`~visprune.flops.inputs`: :func:`describe_rows`, what ``model_flops`` needs to know about
  each row of a processor batch.
"""

from .families import (
    ANYRES_MODEL_TYPES,
    FRAME_VIDEO_MODEL_TYPES,
    MODEL_TYPES,
    QWEN_TYPES,
    TILED_MODEL_TYPES,
    VISION_MODEL_TYPES,
)
from .inputs import describe_rows
from .model import LOGITS, FlopsBreakdown, model_flops
from .paper import FORMULAS, PAPER_TEXT_LENGTHS, PaperRow, paper_table_row, prefill_flops
from .qwen import check_grids, qwen_grids_from_tokens, qwen_vision_flops, window_lengths

__all__ = [
    "ANYRES_MODEL_TYPES",
    "FORMULAS",
    "FRAME_VIDEO_MODEL_TYPES",
    "LOGITS",
    "MODEL_TYPES",
    "PAPER_TEXT_LENGTHS",
    "QWEN_TYPES",
    "TILED_MODEL_TYPES",
    "VISION_MODEL_TYPES",
    "FlopsBreakdown",
    "PaperRow",
    "check_grids",
    "describe_rows",
    "model_flops",
    "paper_table_row",
    "prefill_flops",
    "qwen_grids_from_tokens",
    "qwen_vision_flops",
    "window_lengths",
]
