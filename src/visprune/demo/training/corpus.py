"""Text of the demo task's domain, and image captions: the first two stages of the v2 recipe.

LLaVA's recipe starts from a language model that already knows the words (pre-trained on text),
then trains the projector to caption images with that language model frozen, so the visual
tokens are pushed to where the language model reads words; only then is everything tuned on
instructions. The demo model follows it on its own task:

1. **text** (:func:`text_sample`): scene descriptions written as words stand where the image
   will be, in the prompts of the task: ``question <scene> question answer`` (reading
   comprehension: the answer is in the scene text) and ``describe the image ? <scene> describe
   the image ? <scene>`` (the description repeated in order);
2. **captions** (:func:`caption`): the same description, now of an image, object by object in
   reading order (row by row, left to right), generated after the image with the language model
   frozen;
3. **questions**: the task itself (:mod:`visprune.demo.task`).

A scene description names each object as ``<colour> <shape>``, objects separated by ``,``, with
a final ``.``: ``red circle , blue square .``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import task

#: The question the captioning stage asks (prompt ``DESCRIBE <image> DESCRIBE``).
DESCRIBE = "describe the image ?"
#: Words of descriptions and captions beyond those of the questions and answers.
EXTRA_WORDS = ["describe", "image", ",", "."]  # in task.vocabulary()


def describe(objects: list[tuple[int, str, str]]) -> str:
    """The scene description of ``objects`` ``(cell, colour, shape)``, in reading order."""
    parts = [f"{colour} {shape}" for _, colour, shape in sorted(objects)]
    return " , ".join(parts) + " ."


@dataclass
class TextSample:
    """One text-only training sequence of stage 1 (``text``, words separated by spaces)."""

    text: str
    kind: str  # "question" or "describe"


def text_sample(
    seed: int, index: int, *, split: str = "text", objects: tuple[int, int] | None = None
) -> TextSample:
    """The text-only sample at ``index`` of ``split``: even indices a question about a scene
    written in words, odd ones the describe-and-repeat sequence (scenes drawn as for images)."""
    bounds = objects or (task.MIN_OBJECTS, task.MAX_OBJECTS)
    sample = task.make_sample(seed, split, index, objects=bounds)
    scene = describe(sample.objects)
    if index % 2 == 0:
        prompt = task.prompt_text(sample.question, image_token=scene)
        return TextSample(f"{prompt} {sample.answer}", "question")
    return TextSample(f"{task.prompt_text(DESCRIBE, image_token=scene)} {scene}", "describe")


def caption(sample: task.Sample) -> str:
    """The caption of ``sample``'s image (its scene description)."""
    return describe(sample.objects)
