"""One kept-token picture that explains itself: the question, the method and its budget, the
model's answer (right or wrong when the right answer is known) over the masked view."""

from __future__ import annotations

from typing import Any

from PIL import Image

from .overlay import overlay
from .sheet import MASK_NOTE, Panel, answer_line, frame_colour, kept_line, table
from .text import BLACK, GREY, Line
from .view import readable

__all__ = ["kept_picture"]


def kept_picture(
    view: Image.Image,
    selection: Any,
    *,
    question: str,
    method: str,
    answer: str,
    expected: str | None = None,
    grid: tuple[int, int] | None = None,
) -> Image.Image:
    """The kept tokens of one image on its view, enlarged to be readable, with its labels.

    Parameters
    ----------
    view : PIL.Image
        The image as the model saw it (:func:`visprune.viz.model_view`).
    selection : Selection
        The image's record from ``handle.selections`` (or kept indices with ``grid``).
    question : str
        The prompt the model answered.
    method : str
        The pruning method's name.
    answer : str
        The model's answer.
    expected : str, optional
        The right answer; when given, the answer is marked right or wrong.
    grid : (rows, cols), optional
        Token grid, default the record's.

    Returns
    -------
    PIL.Image
        The view (enlarged by :func:`visprune.viz.readable`, nearest-neighbour when small)
        under its labels, on a canvas wide enough for every label.
    """
    seen = overlay(readable(view), selection, grid=grid)
    kept = getattr(selection, "kept", selection)
    shape = grid or selection.grid
    total = getattr(selection, "n", shape[0] * shape[1])
    merged = getattr(selection, "merged_positions", None)
    budget = kept_line(method, len(kept), total)
    if merged is not None and len(merged):
        budget = f"{method}: {len(kept)} kept + {len(merged)} merged of {total} tokens"
    title: list[Line] = [(f"Q: {question}", BLACK)]
    if expected is not None:
        title.append((f"right answer: {expected}", BLACK))
    title.append((MASK_NOTE, GREY))
    panel = Panel(seen, [answer_line(answer, expected)], frame_colour(answer, expected))
    return table([[panel]], title=title, column_heads=[[(budget, BLACK)]]).picture
