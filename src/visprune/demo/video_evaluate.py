"""What ``visprune demo --video`` runs on the demo video model: prompts as token ids, the greedy
answer, accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import video_model as vmodel
from . import video_task
from .answers import accuracy_per_type, greedy_words, left_padded


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
    batch = left_padded([enc.prompt(c) for c in clips], enc.pad)
    batch["pixel_values_videos"] = pixels(clips)
    return batch


def predict(model, clips: Sequence[video_task.Clip], enc: VideoEncoder, batch: int = 50):
    """Greedy first answer word per clip (what ``generate(max_new_tokens=1)`` returns)."""
    return greedy_words(model, clips, lambda rows: prompt_batch(rows, enc), enc.vocab, batch)


def accuracy(model, clips: Sequence[video_task.Clip], enc: VideoEncoder) -> dict[str, float]:
    """Accuracy per question type and ``"all"``."""
    return accuracy_per_type(clips, predict(model, clips, enc))


def fmt(acc: dict[str, float]) -> str:
    keys = ["all", *video_task.QUESTION_TYPES]
    return " ".join(f"{k}={100 * acc[k]:.1f}" for k in keys if k in acc)
