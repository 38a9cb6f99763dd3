"""Stage 1 of the v2 recipe with scenes written cell by cell, as the image will show them.

The words-in-a-row scene of :func:`corpus.text_sample` (``red circle , blue square .``) spends
three positions on an object and none on empty space, while the image spends one visual token on
every cell, empty or not, and puts an object's colour and shape in that one token. A language
model that learned to read the first has no way of reading the second: the frozen model of the
caption stage then reads little from the visual tokens (measured: 62 % of caption tokens right
after 1,000 caption steps, 0.5 % of captions whole), and how close they come to their words
varies from run to run.

Here the scene stands where the image will stand, one position per cell in the image's order
(row by row): a cell holding a ``<colour> <shape>`` object is the mean of the two words'
embeddings (the two words at one position), an empty cell is the embedding of the image
placeholder word. The language model learns the task's questions and the captions on that text;
the caption stage then only has to make each visual token read as its cell's words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import task
from . import corpus
from .rows import caption_prompt, sequences


def cell_words(samples: Sequence[task.Sample], vocab: dict[str, int], empty: int) -> torch.Tensor:
    """Word ids of every cell: ``(B, 2, NUM_CELLS)``, colour then shape (``empty`` twice for
    an empty cell), cells in row-major order."""
    words = np.full((len(samples), 2, task.NUM_CELLS), empty, np.int64)
    for i, sample in enumerate(samples):
        for cell, colour, shape in sample.objects:
            words[i, 0, cell] = vocab[colour]
            words[i, 1, cell] = vocab[shape]
    return torch.from_numpy(words)


def scene_embeds(
    embedding: torch.nn.Module, input_ids: torch.Tensor, words: torch.Tensor, image: int
) -> torch.Tensor:
    """The input embeddings of ``input_ids`` with each row's ``NUM_CELLS`` image positions
    replaced by its cells' words.

    Parameters
    ----------
    embedding : the language model's input embedding (gradients flow into it)
    input_ids : Tensor ``(B, L)``, each row holding ``NUM_CELLS`` ``image`` ids
    words : Tensor ``(B, 2, NUM_CELLS)`` from :func:`cell_words`

    Returns
    -------
    Tensor ``(B, L, D)``
    """
    at_image = input_ids == image
    counts = at_image.sum(-1)
    if not bool((counts == task.NUM_CELLS).all()):
        raise ValueError(
            f"every row needs exactly {task.NUM_CELLS} image positions, got {counts.tolist()}"
        )
    cells = embedding(words).mean(1)  # (B, NUM_CELLS, D): the two words at one position
    embeds = embedding(input_ids)
    return embeds.masked_scatter(at_image[..., None], cells.to(embeds.dtype))


def text_rows(samples: Sequence[task.Sample], kinds: Sequence[str], enc):
    """``(prompt, target)`` id rows: a question's prompt and answer, or the caption prompt and
    the caption (``kinds``: "question" or "describe"), each target ending in ``</s>``."""
    rows = []
    for sample, kind in zip(samples, kinds, strict=True):
        if kind == "question":
            rows.append((enc.prompt(sample), [*enc.words(sample.answer), enc.eos]))
        else:
            rows.append((caption_prompt(enc), [*enc.words(corpus.caption(sample)), enc.eos]))
    return rows


def kind_of(index: int) -> str:
    """Even indices are questions, odd ones captions (as :func:`corpus.text_sample`)."""
    return "question" if index % 2 == 0 else "describe"


def grid_batch(
    model, samples: Sequence[task.Sample], kinds: Sequence[str], enc
) -> dict[str, torch.Tensor]:
    """A stage-1 batch on cell-by-cell scenes: ``inputs_embeds`` (built from ``model``'s
    current word embeddings, so the step trains them), attention mask, labels on the targets."""
    batch = sequences(text_rows(samples, kinds, enc), enc.pad)
    words = cell_words(samples, enc.vocab, enc.image)
    ids = batch.pop("input_ids")
    batch["inputs_embeds"] = scene_embeds(model.get_input_embeddings(), ids, words, enc.image)
    return batch
