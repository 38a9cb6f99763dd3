"""Labels for pictures: one font, text measured and wrapped so that it is never clipped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from PIL import ImageDraw, ImageFont

__all__ = ["BLACK", "GREY", "RIGHT", "WRONG", "Line", "block_size", "draw_block", "font", "wrap"]

#: Text colours. Right and wrong are Okabe-Ito bluish green and vermillion (told apart with
#: every common colour-vision deficiency), and always come with the words "right" / "wrong".
BLACK, GREY = (0, 0, 0), (90, 90, 90)
RIGHT, WRONG = (0, 130, 95), (213, 94, 0)

#: One line of a label: its text and colour.
Line = tuple[str, tuple[int, int, int]]

FONT_SIZE = 15


@lru_cache(maxsize=8)
def font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (FreeType builds; the fixed bitmap font without
    FreeType). Every label is measured with the font it is drawn with, so either fits."""
    return ImageFont.load_default(size=size)


def line_height(face=None) -> int:
    """Pixels from one line's top to the next one's."""
    face = face or font()
    if hasattr(face, "getmetrics"):
        ascent, descent = face.getmetrics()
        return ascent + descent + 3
    return face.getbbox("Ag")[3] + 3


def text_width(text: str, face=None) -> int:
    """Width in pixels of ``text`` drawn in ``face``."""
    face = face or font()
    return math.ceil(face.getlength(text)) if text else 0  # up: a label never loses a pixel


def wrap(text: str, width: int, face=None) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` px wide; a single word wider than
    ``width`` gets a line of its own (the caller sizes the canvas by :func:`block_size`)."""
    face = face or font()
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and text_width(candidate, face) > width:
                lines.append(current)
                current = word
            else:
                current = candidate
        lines.append(current)
    return lines


def _wrapped(lines: Sequence[Line], width: int, face) -> list[Line]:
    return [(part, colour) for text, colour in lines for part in wrap(text, width, face)]


def block_size(lines: Sequence[Line], width: int, face=None) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``lines`` wrapped to ``width``: wider than ``width``
    only where one word is."""
    face = face or font()
    wrapped = _wrapped(lines, width, face)
    widest = max((text_width(text, face) for text, _ in wrapped), default=0)
    return widest, line_height(face) * len(wrapped)


def draw_block(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: Sequence[Line], width: int, face=None
) -> None:
    """Draw ``lines`` wrapped to ``width`` with their top-left corner at ``xy``."""
    face = face or font()
    x, y = xy
    step = line_height(face)
    for text, colour in _wrapped(lines, width, face):
        draw.text((x, y), text, fill=colour, font=face)
        y += step
