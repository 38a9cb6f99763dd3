"""Kept-token pictures: which visual tokens a pruning kept, on the view the model saw.

:func:`overlay` masks the dropped patches of an image (kept ones stay bit-identical);
:func:`model_view` gives the view a model saw, :func:`readable` scales it for looking at;
:func:`kept_picture` labels one overlay with the question, method, budget and answers, and
:func:`table` lays several out as a labelled sheet, :func:`frames_sheet` a clip's frames.
Only Pillow and NumPy are imported.
"""

from .explain import kept_picture
from .overlay import overlay
from .sheet import (
    MASK_NOTE,
    Panel,
    Sheet,
    answer_line,
    budget_text,
    frame_colour,
    kept_line,
    stack,
    table,
    verdict,
)
from .video import FramesRun, frames_sheet
from .view import VIEW_MAX, VIEW_MIN, model_view, readable

__all__ = [
    "MASK_NOTE",
    "VIEW_MAX",
    "VIEW_MIN",
    "FramesRun",
    "Panel",
    "Sheet",
    "answer_line",
    "budget_text",
    "frame_colour",
    "frames_sheet",
    "kept_line",
    "kept_picture",
    "model_view",
    "overlay",
    "readable",
    "stack",
    "table",
    "verdict",
]
