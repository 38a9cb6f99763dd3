"""How well the demo model's visual tokens sit near the words that describe them.

Text-conditioned methods (ReDiPrune, ResPrune, TrimTokenator, CDPruner) score each visual token
by its similarity to the prompt's text. On a model whose projector was aligned with the
language model's word embeddings (LLaVA's stage 1), the token of the object a question names
scores high; on a model trained on questions alone it need not. :func:`answer_ranks` measures
it: the rank of the answer's token among an image's tokens by cosine similarity to the mean
input embedding of the prompt after the image (the question), the quantity those methods read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import task

#: Question types whose answer lives in exactly one token (``exists`` only when the answer is
#: yes: a "no" image holds look-alikes, not the object named).
SINGLE_OBJECT = ("colour", "shape", "exists", "position")


def single_object(sample: task.Sample) -> bool:
    """True when ``sample``'s answer lives in one visual token."""
    if sample.qtype == "exists":
        return sample.answer == "yes"
    return sample.qtype in SINGLE_OBJECT


def answer_ranks(model, samples: Sequence[task.Sample], encoder, batch: int = 100) -> np.ndarray:
    """Rank (1 = most similar) of each single-object sample's answer token.

    Parameters
    ----------
    model : LlavaForConditionalGeneration
        The demo model.
    samples : sequence of task.Sample
        Test questions; those that are not single-object (:func:`single_object`) are skipped.
    encoder : visprune.demo.evaluate.Encoder

    Returns
    -------
    numpy.ndarray
        ``(m,)`` int ranks in ``[1, NUM_CELLS]``, one per single-object sample, in order.
    """
    import torch

    chosen = [s for s in samples if single_object(s)]
    embed = model.get_input_embeddings()
    ranks: list[int] = []
    for start in range(0, len(chosen), batch):
        part = chosen[start : start + batch]
        pixels = torch.from_numpy(task.normalize(np.stack([s.image for s in part])))
        with torch.no_grad():
            features = model.model.get_image_features(pixel_values=pixels)
            features = torch.stack(list(getattr(features, "pooler_output", features)))
            features = features.reshape(len(part), task.NUM_CELLS, -1)
            for sample, tokens in zip(part, features, strict=True):
                text = embed(torch.tensor(encoder.words(sample.question))).mean(dim=0)
                similarity = torch.nn.functional.cosine_similarity(tokens, text[None], dim=-1)
                order = similarity.argsort(descending=True, stable=True)
                ranks.append(int((order == sample.targets[0]).nonzero()[0, 0]) + 1)
    return np.array(ranks, dtype=np.int64)


def summary(ranks: np.ndarray, top: int = 7) -> dict[str, float]:
    """``median`` rank and the share of answers ranked within the first ``top`` (``top7``)."""
    return {"median": float(np.median(ranks)), f"top{top}": float(np.mean(ranks <= top))}
