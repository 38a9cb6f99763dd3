"""A deterministic synthetic visual-QA task where the answer lives in one or two visual tokens.

Images are ``IMAGE_SIZE`` px squares cut into a ``GRID x GRID`` grid of ``PATCH`` px cells (one
cell = one CLIP patch = one visual token). Every object is a small coloured shape drawn inside a
single cell, so its colour and shape live in the same token; the background is near-uniform grey
with per-pixel noise. An image holds more objects than the smallest pruning budget keeps, and
every question is about one or two of them, so a pruning method must keep the right tokens.

Question types (answers are single words, balanced within each type):

``colour``   what colour is the <shape> ?            (the shape is unique in the image)
``shape``    what shape is the <colour> object ?     (the colour is unique in the image)
``exists``   is there a <colour> <shape> ?           (yes / no; "no" images hold look-alikes)
``count``    how many <colour> objects are there ?   (one / two / three)
``position`` where is the <colour> <shape> ?     (left / right / top / bottom of the image)

Samples are addressed by ``(seed, split, index)``: equal addresses give equal samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
PATCH = 8
GRID = IMAGE_SIZE // PATCH  # 8 -> 64 visual tokens
NUM_CELLS = GRID * GRID

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "cyan": (0.10, 0.85, 0.90),
}
COLOUR_NAMES = list(COLOURS)
COLOUR_RGB = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)


def _templates() -> dict[str, np.ndarray]:
    """7x7 boolean masks, drawn at offset (0, 0) of an 8x8 cell (one pixel of margin)."""
    y, x = np.mgrid[0:7, 0:7]
    c = 3.0
    square = np.zeros((7, 7), bool)
    square[1:6, 1:6] = True
    circle = (y - c) ** 2 + (x - c) ** 2 <= 3.3**2
    triangle = (y >= 1) & (np.abs(x - c) <= (y - 0.5) * 0.55 + 0.01) & (y <= 6)
    triangle |= (y == 6) & (x >= 0)
    cross = ((np.abs(x - c) <= 0.5) | (np.abs(y - c) <= 0.5)) & (x >= 0)
    ring = (np.abs(y - c) + np.abs(x - c)) <= 3.2
    ring &= (np.abs(y - c) + np.abs(x - c)) >= 1.8
    return {
        "square": square,
        "circle": circle,
        "triangle": triangle,
        "cross": cross,
        "diamond": ring,
    }


SHAPE_MASKS = _templates()
SHAPE_NAMES = list(SHAPE_MASKS)
COUNT_WORDS = ["one", "two", "three"]
POSITIONS = ["left", "right", "top", "bottom"]
ANSWERS_BY_TYPE: dict[str, list[str]] = {
    "colour": COLOUR_NAMES,
    "shape": SHAPE_NAMES,
    "exists": ["yes", "no"],
    "count": COUNT_WORDS,
    "position": POSITIONS,
}
QUESTION_TYPES = list(ANSWERS_BY_TYPE)
#: Sample streams; "text" and "caption" feed the first two stages of the v2 recipe (corpus.py).
SPLITS = {"train": 0, "validation": 1, "test": 2, "text": 3, "caption": 4}
#: Objects per image at full difficulty (the 11 % budget keeps 7 of 64 tokens).
MIN_OBJECTS, MAX_OBJECTS = 8, 14
#: Mean and std of the image processor (and of :func:`normalize`).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass
class Sample:
    """One visual question: ``image`` ``(H, W, 3)`` uint8, ``objects`` ``(cell, colour, shape)``."""

    image: np.ndarray
    question: str
    answer: str
    qtype: str
    objects: list[tuple[int, str, str]]
    targets: list[int]  # cells whose tokens hold the answer

    @property
    def prompt(self) -> str:
        """The question, the image, the question again (see :func:`prompt_text`)."""
        return prompt_text(self.question)

    def pil(self):
        from PIL import Image

        return Image.fromarray(self.image)


def prompt_text(question: str, image_token: str = "<image>") -> str:
    """The demo prompt: ``question <image> question``.

    Asked before the image, the question reaches every image token, so each token can check
    "am I the object named?" on its own (a from-scratch model learns that far faster than finding
    the object from the end of the prompt); asked again after the image, it is the prompt text
    that text-conditioned pruning methods read (the tokens after the last visual token).
    """
    return f"{question} {image_token} {question}"


def vocabulary() -> list[str]:
    """Every word of every question and answer (no special tokens), in a fixed order."""
    words = "what colour is the shape object there a how many objects are where ?"
    out: list[str] = []
    for word in [*words.split(), *COLOUR_NAMES, *SHAPE_NAMES, "yes", "no", *COUNT_WORDS]:
        if word not in out:
            out.append(word)
    out += [p for p in POSITIONS if p not in out]
    # Words of scene descriptions and captions (corpus.py), last so earlier ids stay put.
    out += ["describe", "image", ",", "."]
    return out


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def _fill(rng, cells, fixed, n, allowed) -> list[tuple[int, str, str]]:
    """``fixed`` objects plus random ``(colour, shape)`` pairs passing ``allowed``, ``n`` in all."""
    objects = list(fixed)
    while len(objects) < n:
        colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        shape = SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))]
        if allowed(colour, shape):
            objects.append((colour, shape))
    return [(int(cell), c, s) for cell, (c, s) in zip(cells, objects, strict=True)]


def _fewest_objects(qtype: str, answer: str) -> int:
    """The fewest objects a question can be asked about: the curriculum starts from there."""
    if qtype == "count":
        return COUNT_WORDS.index(answer) + 1
    if qtype == "exists" and answer == "no":
        return 2
    return 1


def _position(cell: int) -> str | None:
    """Where ``cell`` lies in the image (its dominant offset from the centre), or None when
    neither axis clearly dominates (near a diagonal)."""
    row, col = divmod(cell, GRID)
    dy, dx = row + 0.5 - GRID / 2, col + 0.5 - GRID / 2
    if abs(abs(dx) - abs(dy)) < 1:
        return None
    if abs(dx) > abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


#: The cells of each position answer (cells near a diagonal have none).
POSITION_CELLS = {p: [c for c in range(NUM_CELLS) if _position(c) == p] for p in POSITIONS}


def make_sample(
    seed: int,
    split: str,
    index: int,
    *,
    qtype: str | None = None,
    objects: tuple[int, int] = (MIN_OBJECTS, MAX_OBJECTS),
) -> Sample:
    """The sample at ``(seed, split, index)``; ``objects`` is the (min, max) object count.

    The question type cycles with ``index`` (balanced types) unless ``qtype`` is given; the
    answer is drawn uniformly from that type's answers before the image is built.
    """
    rng = _rng(seed, split, index)
    qtype = qtype or QUESTION_TYPES[index % len(QUESTION_TYPES)]
    answers = ANSWERS_BY_TYPE[qtype]
    answer = answers[rng.integers(len(answers))]
    n = int(rng.integers(objects[0], objects[1] + 1))
    n = max(n, _fewest_objects(qtype, answer))
    cells = rng.choice(NUM_CELLS, size=n, replace=False)
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    shape = SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))]
    targets = [int(cells[0])]
    if qtype == "colour":
        objs = _fill(rng, cells, [(answer, shape)], n, lambda c, s: s != shape)
        question = f"what colour is the {shape} ?"
    elif qtype == "shape":
        objs = _fill(rng, cells, [(colour, answer)], n, lambda c, s: c != colour)
        question = f"what shape is the {colour} object ?"
    elif qtype == "exists":
        if answer == "yes":
            fixed = [(colour, shape)]
        else:  # look-alikes: the colour on another shape and the shape in another colour
            other_shape = [s for s in SHAPE_NAMES if s != shape][rng.integers(len(SHAPE_NAMES) - 1)]
            other_colour = [c for c in COLOUR_NAMES if c != colour][
                rng.integers(len(COLOUR_NAMES) - 1)
            ]
            fixed = [(colour, other_shape), (other_colour, shape)]
            targets = [int(cells[0]), int(cells[1])]
        objs = _fill(rng, cells, fixed, n, lambda c, s: (c, s) != (colour, shape))
        question = f"is there a {colour} {shape} ?"
    elif qtype == "count":
        k = COUNT_WORDS.index(answer) + 1
        fixed = [(colour, SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))]) for _ in range(k)]
        objs = _fill(rng, cells, fixed, n, lambda c, s: c != colour)
        targets = [int(c) for c in cells[:k]]
        question = f"how many {colour} objects are there ?"
    elif qtype == "position":
        cells[0] = rng.choice(POSITION_CELLS[answer])
        others = [c for c in range(NUM_CELLS) if c != cells[0]]
        cells[1:] = rng.choice(others, size=n - 1, replace=False)
        targets = [int(cells[0])]
        objs = _fill(rng, cells, [(colour, shape)], n, lambda c, s: (c, s) != (colour, shape))
        question = f"where is the {colour} {shape} ?"
    else:
        raise ValueError(f"unknown question type {qtype!r}; choose one of {QUESTION_TYPES}")
    image = render(objs, rng)
    return Sample(image, question, answer, qtype, objs, targets)


def render(
    objects: list[tuple[int, str, str]],
    rng: np.random.Generator,
    *,
    size: int = IMAGE_SIZE,
    background: tuple[float, np.ndarray] | None = None,
) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 image: noisy grey background plus the objects.

    ``background`` is ``(grey level, (3,) tint)``, drawn from ``rng`` when None (the frames of
    one video clip share theirs).
    """
    if background is None:
        base = 0.42 + 0.12 * rng.random()
        tint = (rng.random(3) - 0.5) * 0.06
    else:
        base, tint = background
    grid = size // PATCH
    img = base + tint + rng.normal(0.0, 0.035, size=(size, size, 3))
    for cell, colour, shape in objects:
        row, col = divmod(cell, grid)
        y, x = row * PATCH, col * PATCH
        rgb = COLOUR_RGB[COLOUR_NAMES.index(colour)] + (rng.random(3) - 0.5) * 0.08
        mask = SHAPE_MASKS[shape]
        patch = img[y : y + 7, x : x + 7]
        patch[mask] = rgb + rng.normal(0.0, 0.02, size=(int(mask.sum()), 3))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def normalize(images: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32, exactly as the demo processor does."""
    x = images.astype(np.float32) * np.float32(1 / 255)
    mean = np.array(MEAN, np.float32)
    std = np.array(STD, np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))


def make_split(
    seed: int,
    split: str,
    count: int,
    *,
    start: int = 0,
    objects: tuple[int, int] = (MIN_OBJECTS, MAX_OBJECTS),
) -> list[Sample]:
    """``count`` consecutive samples of ``split`` (balanced question types)."""
    return [make_sample(seed, split, i, objects=objects) for i in range(start, start + count)]
