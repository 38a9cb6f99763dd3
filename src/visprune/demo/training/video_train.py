"""Training of the demo video model on :mod:`visprune.demo.video_task` (CPU); its evaluation is
:mod:`visprune.demo.video_evaluate`.

One stage of questions (answer loss), one question type added at a time, with the image demo's
training-only probes (:mod:`visprune.demo.training.train`): per-token colour / shape / row / column
probes on the projector output of every frame, and a probe on the language model's hidden
states marking the tokens that hold the answer (the event's frame and cell). The probes are
not part of the saved model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import video_model as vmodel
from .. import video_task
from ..video_evaluate import VideoEncoder, accuracy, fmt, pixels
from .rows import sequences
from .stages import BestCheckpoint, Curriculum, StageConfig, run_stage
from .train import CellProbes, answer_accuracy, scene_cell_targets

#: Question types of each curriculum stage, one more type per stage (as the image demo's).
STAGES: tuple[tuple[str, ...], ...] = tuple(
    tuple(video_task.QUESTION_TYPES[: i + 1]) for i in range(len(video_task.QUESTION_TYPES))
)


def train_batch(clips: Sequence[video_task.Clip], enc: VideoEncoder) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt answer </s>``, loss on the answer and ``</s>``."""
    rows = [(enc.prompt(c), [*enc.words(c.answer), enc.eos]) for c in clips]
    batch = sequences(rows, enc.pad)
    batch["pixel_values_videos"] = pixels(clips)
    return batch


def cell_targets(clips: Sequence[video_task.Clip]) -> dict[str, torch.Tensor]:
    """Per frame token (clips x frames x cells, flattened): colour / shape index of the object
    in the cell (``len(COLOUR_NAMES)`` / ``len(SHAPE_NAMES)`` when empty), row and column."""
    frames = [objects for clip in clips for objects in clip.objects]
    return scene_cell_targets(frames, video_task.CELLS, video_task.GRID)


def answer_targets(clips: Sequence[video_task.Clip]) -> torch.Tensor:
    """Per video token (clips x ``NUM_TOKENS``, flattened): 1 where the answer lives."""
    labels = np.zeros((len(clips), video_task.NUM_TOKENS), np.int64)
    for i, clip in enumerate(clips):
        labels[i, clip.token_targets()] = 1
    return torch.from_numpy(labels.reshape(-1))


@dataclass
class VideoConfig:
    seed: int = 0
    threads: int = 2
    questions: StageConfig = field(
        default_factory=lambda: StageConfig(steps=6000, lr=2e-3, warmup=150)
    )
    #: Weights of the per-token probes and of the answer-token probe (0 disables either).
    probe_weight: float = 1.0
    answer_probe_weight: float = 1.0
    answer_probe_layer: int = 2
    stage_accuracy: float = 0.9
    stage_min_steps: int = 150
    stage_max_steps: int = 2500
    eval_every: int = 500
    eval_size: int = 300


def train(cfg: VideoConfig, out: str, log: Callable[[str], None] = print, sizes=None):
    """Train from scratch; save the best checkpoint (validation accuracy) under ``out``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    enc = VideoEncoder()
    config = vmodel.build_config(enc.tokenizer, **(sizes or {}))
    model = vmodel.build_model(config, cfg.seed)
    width = config.text_config.hidden_size
    probes = CellProbes(width, video_task.GRID)
    answer_probe = torch.nn.Linear(width, 2)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e6:.2f} M parameters; config {cfg}")
    val = video_task.make_split(cfg.seed, "validation", cfg.eval_size)
    projected: list[torch.Tensor] = []
    capture = model.model.multi_modal_projector.register_forward_hook(
        lambda module, args, output: projected.append(output)
    )
    began = time.time()
    curriculum = Curriculum(
        STAGES, cfg.stage_accuracy, cfg.stage_min_steps, cfg.stage_max_steps, log
    )
    current: dict[str, list] = {"clips": []}

    def make_batch(step: int):
        types = curriculum.types
        base = step * cfg.questions.batch
        clips = [
            video_task.make_clip(cfg.seed, "train", base + i, qtype=types[(base + i) % len(types)])
            for i in range(cfg.questions.batch)
        ]
        current["clips"] = clips
        projected.clear()
        batch = train_batch(clips, enc)
        if cfg.answer_probe_weight > 0:
            batch["output_hidden_states"] = True
        return batch

    def probe_loss(output, batch) -> torch.Tensor:
        clips = current["clips"]
        loss = cfg.probe_weight * probes(projected[-1], cell_targets(clips))
        if cfg.answer_probe_weight > 0:
            hidden = output.hidden_states[cfg.answer_probe_layer]
            tokens = hidden[batch["input_ids"] == enc.video]  # frame-major per clip
            ce = torch.nn.functional.cross_entropy(answer_probe(tokens), answer_targets(clips))
            loss = loss + cfg.answer_probe_weight * ce
        return loss

    def advance(step: int, output, batch) -> None:
        curriculum.update(step, answer_accuracy(output.logits, batch["labels"]))

    best = BestCheckpoint(lambda info: vmodel.save(model, out, info), out, log)

    def evaluate(step: int) -> None:
        acc = accuracy(model, val, enc)
        log(f"  step {step}: validation {fmt(acc)}")
        best.offer(acc, seed=cfg.seed, params=params, step=step, began=began)

    try:
        run_stage(
            "video",
            model,
            [*model.parameters(), *probes.parameters(), *answer_probe.parameters()],
            cfg.questions,
            make_batch,
            log,
            evaluate=evaluate,
            every=cfg.eval_every,
            on_step=advance,
            extra_loss=probe_loss,
        )
    finally:
        capture.remove()
    return model
