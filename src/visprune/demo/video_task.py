"""A deterministic synthetic video-QA task: short clips where the answer lives in one or two frames.

A clip is ``FRAMES`` frames of ``FRAME_SIZE`` px, each cut into a ``GRID x GRID`` grid of
``task.PATCH`` px cells (one cell = one patch = one visual token per frame, ``CELLS`` tokens per
frame). A few objects stand still through the clip (the shapes and colours of :mod:`task`, one
per cell) while one event happens; each question is about the event, so the tokens that answer
it sit in one or two frames and a pruning method must keep those frames' right cells.

Question types (answers are single words, balanced within each type):

``appeared``  what shape appeared ?                  (an object shown in one frame only,
                                                      not the first)
``moved``     what colour moved ?                    (one object jumps to another cell once;
                                                      the colours in the clip are distinct)
``last``      what colour is the <shape> at the end ? (the shape is unique; it changes colour
                                                      in the last frame only)

Samples are addressed by ``(seed, split, index)``: equal addresses give equal samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import task

FRAMES = 8
FRAME_SIZE = 32
GRID = FRAME_SIZE // task.PATCH  # 4 -> 16 visual tokens per frame
CELLS = GRID * GRID
NUM_TOKENS = FRAMES * CELLS
#: Objects standing still through a clip (the event's object comes on top).
MIN_STILL, MAX_STILL = 2, 4

ANSWERS_BY_TYPE: dict[str, list[str]] = {
    "appeared": task.SHAPE_NAMES,
    "moved": task.COLOUR_NAMES,
    "last": task.COLOUR_NAMES,
}
QUESTION_TYPES = list(ANSWERS_BY_TYPE)
#: Sample streams, apart from the image task's (the seeds' second word differs).
SPLITS = {"train": 10, "validation": 11, "test": 12}

Object = tuple[int, str, str]  # (cell, colour, shape)


@dataclass
class Clip:
    """One video question.

    ``frames`` ``(FRAMES, FRAME_SIZE, FRAME_SIZE, 3)`` uint8; ``objects[f]`` the objects drawn
    in frame ``f``; ``targets`` the ``(frame, cell)`` tokens that hold the answer.
    """

    frames: np.ndarray
    question: str
    answer: str
    qtype: str
    objects: list[list[Object]]
    targets: list[tuple[int, int]]

    @property
    def prompt(self) -> str:
        """The question, the video, the question again (as :func:`task.prompt_text`)."""
        return prompt_text(self.question)

    def token_targets(self) -> list[int]:
        """The answer's tokens as indices into the clip's ``NUM_TOKENS`` tokens (frame-major)."""
        return [frame * CELLS + cell for frame, cell in self.targets]


def prompt_text(question: str, video_token: str = "<video>") -> str:
    """``question <video> question``: see :func:`task.prompt_text` for why it is asked twice."""
    return f"{question} {video_token} {question}"


def vocabulary() -> list[str]:
    """Every word of every question and answer (no special tokens), in a fixed order."""
    words = "what shape appeared ? colour moved is the at end"
    out: list[str] = []
    for word in [*words.split(), *task.COLOUR_NAMES, *task.SHAPE_NAMES]:
        if word not in out:
            out.append(word)
    return out


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def _pick(rng: np.random.Generator, names: list[str], exclude=()) -> str:
    allowed = [n for n in names if n not in exclude]
    return allowed[int(rng.integers(len(allowed)))]


def make_clip(seed: int, split: str, index: int, *, qtype: str | None = None) -> Clip:
    """The clip at ``(seed, split, index)``.

    The question type cycles with ``index`` (balanced types) unless ``qtype`` is given; the
    answer is drawn uniformly from that type's answers before the clip is built.
    """
    rng = _rng(seed, split, index)
    qtype = qtype or QUESTION_TYPES[index % len(QUESTION_TYPES)]
    if qtype not in ANSWERS_BY_TYPE:
        raise ValueError(f"unknown question type {qtype!r}; choose one of {QUESTION_TYPES}")
    answers = ANSWERS_BY_TYPE[qtype]
    answer = answers[int(rng.integers(len(answers)))]
    still = int(rng.integers(MIN_STILL, MAX_STILL + 1))
    cells = [int(c) for c in rng.choice(CELLS, size=still + 2, replace=False)]
    used_colours: list[str] = []
    used_shapes: list[str] = []
    if qtype == "moved":
        used_colours.append(answer)
    if qtype == "last":
        shape = _pick(rng, task.SHAPE_NAMES)
        used_shapes.append(shape)
    static: list[Object] = []
    for cell in cells[:still]:
        # "moved" needs distinct colours, "last" a unique shape.
        colour = _pick(rng, task.COLOUR_NAMES, used_colours if qtype == "moved" else ())
        shape_ = _pick(rng, task.SHAPE_NAMES, used_shapes if qtype == "last" else ())
        if qtype == "moved":
            used_colours.append(colour)
        static.append((cell, colour, shape_))
    spare, other = cells[still], cells[still + 1]
    frames: list[list[Object]] = [list(static) for _ in range(FRAMES)]
    if qtype == "appeared":
        # Not in the first frame: an object there and nowhere later has vanished, not appeared
        # (and under causal attention its tokens cannot tell the two apart).
        at = int(rng.integers(1, FRAMES))
        frames[at].append((spare, _pick(rng, task.COLOUR_NAMES), answer))
        targets = [(at, spare)]
    elif qtype == "moved":
        at = int(rng.integers(1, FRAMES))  # first frame at the new place
        mover_shape = _pick(rng, task.SHAPE_NAMES)
        for f in range(FRAMES):
            frames[f].append((spare if f < at else other, answer, mover_shape))
        targets = [(at - 1, spare), (at, other)]
    else:  # last
        before = _pick(rng, task.COLOUR_NAMES, (answer,))
        for f in range(FRAMES):
            frames[f].append((spare, answer if f == FRAMES - 1 else before, shape))
        targets = [(FRAMES - 1, spare)]
    question = {
        "appeared": "what shape appeared ?",
        "moved": "what colour moved ?",
    }.get(qtype) or f"what colour is the {shape} at the end ?"
    base = 0.42 + 0.12 * rng.random()
    tint = (rng.random(3) - 0.5) * 0.06
    pixels = np.stack(
        [task.render(objs, rng, size=FRAME_SIZE, background=(base, tint)) for objs in frames]
    )
    return Clip(pixels, question, answer, qtype, frames, targets)


def make_split(seed: int, split: str, count: int, *, start: int = 0) -> list[Clip]:
    """``count`` consecutive clips of ``split`` (balanced question types)."""
    return [make_clip(seed, split, i) for i in range(start, start + count)]


def normalize(clips: np.ndarray) -> np.ndarray:
    """``(B, F, H, W, 3)`` uint8 -> ``(B, F, 3, H, W)`` float32 (the image task's normalisation)."""
    b, f = clips.shape[:2]
    flat = task.normalize(clips.reshape(b * f, *clips.shape[2:]))
    return flat.reshape(b, f, *flat.shape[1:])
