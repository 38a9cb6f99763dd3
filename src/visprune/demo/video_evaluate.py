"""What ``visprune demo --video`` runs on the demo video model: prompts as token ids, the greedy
answer, accuracy."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from . import video_model as vmodel
from . import video_task


class VideoEncoder:
    """Token ids of prompts and answers (the clip expanded to its ``NUM_TOKENS`` tokens)."""

    def __init__(self, tokenizer=None) -> None:
        self.tokenizer = tokenizer or vmodel.build_tokenizer()
        self.vocab = self.tokenizer.get_vocab()
        self.video = self.vocab[vmodel.VIDEO]
        self.pad = self.vocab[self.tokenizer.pad_token]
        self.eos = self.vocab[self.tokenizer.eos_token]

    def words(self, text: str) -> list[int]:
        return [self.vocab[w] for w in text.replace("?", " ?").split()]

    def prompt(self, clip: video_task.Clip) -> list[int]:
        question = self.words(clip.question)
        return question + [self.video] * video_task.NUM_TOKENS + question


def pixels(clips: Sequence[video_task.Clip]) -> torch.Tensor:
    return torch.from_numpy(video_task.normalize(np.stack([c.frames for c in clips])))


def prompt_batch(clips: Sequence[video_task.Clip], enc: VideoEncoder) -> dict[str, torch.Tensor]:
    """Left-padded prompts (what a left-padding processor gives)."""
    rows = [enc.prompt(c) for c in clips]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), enc.pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = torch.tensor(r)
        mask[i, length - len(r) :] = 1
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels(clips)}


@torch.no_grad()
def predict(model, clips: Sequence[video_task.Clip], enc: VideoEncoder, batch: int = 50):
    """Greedy first answer word per clip (what ``generate(max_new_tokens=1)`` returns)."""
    was_training = model.training
    model.eval()
    inverse = {i: w for w, i in enc.vocab.items()}
    out: list[str] = []
    for i in range(0, len(clips), batch):
        logits = model(**prompt_batch(clips[i : i + batch], enc), logits_to_keep=1).logits
        out += [inverse[int(t)] for t in logits[:, -1].argmax(-1)]
    model.train(was_training)
    return out


def accuracy(model, clips: Sequence[video_task.Clip], enc: VideoEncoder) -> dict[str, float]:
    """Accuracy per question type and ``"all"``."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for clip, word in zip(clips, predict(model, clips, enc), strict=True):
        hits[clip.qtype].append(word == clip.answer)
        hits["all"].append(word == clip.answer)
    return {k: float(np.mean(v)) for k, v in hits.items()}


def fmt(acc: dict[str, float]) -> str:
    keys = ["all", *video_task.QUESTION_TYPES]
    return " ".join(f"{k}={100 * acc[k]:.1f}" for k in keys if k in acc)
