"""The training loop of the demo model (CPU, on-the-fly data), with its training-only probes.

Evaluation (prompts, greedy answers, accuracy) is what the demo runs: :mod:`visprune.demo.evaluate`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import model as demo_model
from .. import task
from ..evaluate import Encoder, accuracy, fmt


@dataclass
class TrainConfig:
    minutes: float = 65.0
    steps: int | None = None  # None: estimated from the measured speed and ``minutes``
    batch: int = 48
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 150
    weight_decay: float = 0.05
    #: Curriculum (:data:`STAGES`): move to the next stage once the running training accuracy
    #: of the current one reaches ``stage_accuracy`` (after at least ``stage_min_steps``), or
    #: after ``stage_max_steps`` whatever the accuracy.
    stage_accuracy: float = 0.9
    stage_min_steps: int = 150
    stage_max_steps: int = 2500
    eval_every: int = 250
    eval_size: int = 500
    save_every_minutes: float = 5.0
    #: Weight of the per-token probe loss (:class:`CellProbes`) added to the answer loss.
    probe_weight: float = 1.0
    #: Weight of the named-object probe (:func:`named_targets`) on the language model's hidden
    #: states of the image tokens after layer ``target_probe_layer`` (0 disables it).
    target_probe_weight: float = 1.0
    target_probe_layer: int = 2
    seed: int = 0
    threads: int = 2
    bf16: bool = False  # bfloat16 autocast for the forward pass (fp32 weights and optimizer)


class CellProbes(torch.nn.Module):
    """Training-only linear probes reading each visual token's cell from the projector output.

    Dense supervision: every one of the ``GRID * GRID`` tokens of every image gets four labels
    (object colour or "none", object shape or "none", row, column), against one answer word per
    image for the VQA loss. With them the vision tower and projector learn features that name
    each cell's object within a few hundred steps; without them a from-scratch model at 8-14
    objects stays at chance for tens of thousands of samples. The probes are not part of the
    saved model (it stays a plain ``LlavaForConditionalGeneration``).
    """

    def __init__(self, width: int, grid: int = task.GRID) -> None:
        super().__init__()
        self.colour = torch.nn.Linear(width, len(task.COLOUR_NAMES) + 1)
        self.shape = torch.nn.Linear(width, len(task.SHAPE_NAMES) + 1)
        self.row = torch.nn.Linear(width, grid)
        self.column = torch.nn.Linear(width, grid)

    def forward(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the four probes' mean cross-entropies.

        Parameters
        ----------
        features : Tensor ``(B * GRID * GRID, width)`` or ``(B, GRID * GRID, width)``
            Projector output of the images, cells in row-major order.
        targets : dict of Tensor ``(B * GRID * GRID,)``
            From :func:`cell_targets`.
        """
        x = features.reshape(-1, features.shape[-1])
        ce = torch.nn.functional.cross_entropy
        # A sum, not a mean: each probe at full weight next to the answer loss (a mean, i.e. a
        # quarter weight each, left colour questions at 65 % after 2,500 steps against 97 %).
        return sum(ce(getattr(self, name)(x), targets[name]) for name in targets)


def cell_targets(samples: Sequence[task.Sample]) -> dict[str, torch.Tensor]:
    """Per visual token (row-major cells, flattened over the batch): colour / shape index of the
    object drawn in the cell (``len(COLOUR_NAMES)`` / ``len(SHAPE_NAMES)`` for an empty cell),
    and the cell's row and column."""
    return scene_cell_targets([s.objects for s in samples], task.NUM_CELLS, task.GRID)


def scene_cell_targets(
    scenes: Sequence[Sequence[tuple[int, str, str]]], cells: int, grid: int
) -> dict[str, torch.Tensor]:
    """:func:`cell_targets` of scenes (an image's or a frame's objects, each ``(cell, colour,
    shape)``) of ``cells`` row-major cells on a ``grid`` x ``grid`` board: every target is
    ``(len(scenes) * cells,)``, flattened over the scenes."""
    colour = np.full((len(scenes), cells), len(task.COLOUR_NAMES), np.int64)
    shape = np.full((len(scenes), cells), len(task.SHAPE_NAMES), np.int64)
    for i, objects in enumerate(scenes):
        for cell, c, s in objects:
            colour[i, cell] = task.COLOUR_NAMES.index(c)
            shape[i, cell] = task.SHAPE_NAMES.index(s)
    index = np.tile(np.arange(cells), len(scenes))
    return {
        "colour": torch.from_numpy(colour.reshape(-1)),
        "shape": torch.from_numpy(shape.reshape(-1)),
        "row": torch.from_numpy(index // grid),
        "column": torch.from_numpy(index % grid),
    }


def named_targets(samples: Sequence[task.Sample]) -> torch.Tensor:
    """Per visual token (row-major cells, flattened over the batch): 1 for an object the question
    names, 0 otherwise.

    Dense supervision of the step every question type starts with: find the named objects (the
    question comes before the image, so each image token can check itself). With it the stages
    of the curriculum take about half the steps: colour questions reach 100 % validation
    accuracy in 500 steps of 32 instead of about 2,000.
    """
    labels = np.zeros((len(samples), task.NUM_CELLS), np.int64)
    for i, sample in enumerate(samples):
        if sample.qtype == "exists" and sample.answer == "no":
            continue  # the targets are look-alikes, not the object named
        labels[i, sample.targets] = 1
    return torch.from_numpy(labels.reshape(-1))


def named_probe_loss(
    probe: torch.nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    samples: Sequence[task.Sample],
    image_token: int,
) -> torch.Tensor:
    """Cross-entropy of ``probe`` telling the image tokens of a named object from the rest.

    Parameters
    ----------
    probe : torch.nn.Module
        ``(n, width) -> (n, classes)`` logits.
    hidden : Tensor ``(B, L, width)``
        A language-model layer's hidden states of the question rows.
    input_ids : Tensor ``(B, L)``
        Their ids; each row holds ``task.NUM_CELLS`` image tokens, in row-major cell order.
    samples : sequence of task.Sample
        The ``B`` questions (:func:`named_targets` gives the labels).
    """
    image_tokens = hidden[input_ids == image_token]
    if image_tokens.shape[0] != len(samples) * task.NUM_CELLS:
        raise ValueError(
            f"expected {task.NUM_CELLS} image tokens in each of the {len(samples)} rows, got "
            f"{image_tokens.shape[0]} in all"
        )
    return torch.nn.functional.cross_entropy(probe(image_tokens), named_targets(samples))


def train_batch(samples: Sequence[task.Sample], enc: Encoder) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt answer </s>`` with loss on the answer and ``</s>`` only."""
    rows = [enc.prompt(s) for s in samples]
    answers = [[*enc.words(s.answer), enc.eos] for s in samples]
    length = max(len(r) + len(a) for r, a in zip(rows, answers, strict=True))
    ids = torch.full((len(rows), length), enc.pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (r, a) in enumerate(zip(rows, answers, strict=True)):
        n = len(r) + len(a)
        ids[i, :n] = torch.tensor(r + a)
        labels[i, len(r) : n] = torch.tensor(a)
        mask[i, :n] = 1
    pixels = torch.from_numpy(task.normalize(np.stack([s.image for s in samples])))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


#: Question types of each curriculum stage, one more type per stage; every stage is at full
#: difficulty (8-14 objects): with the cell probes the features are learned from the start, and a
#: model that learned one type on few objects does not carry it over to many. Mixing every type
#: from the first step stalls at chance; a type that joins a model that already answers the
#: others is learned within a few hundred steps.
STAGES: tuple[tuple[str, ...], ...] = tuple(
    tuple(task.QUESTION_TYPES[: i + 1]) for i in range(len(task.QUESTION_TYPES))
)


def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose first answer token is the argmax at the position predicting it."""
    first = (labels != -100).int().argmax(-1)  # first labelled position per row
    rows = torch.arange(labels.shape[0])
    predicted = logits[rows, first - 1].argmax(-1)
    return float((predicted == labels[rows, first]).float().mean())


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def step_samples(cfg: TrainConfig, step: int, types: Sequence[str]) -> list[task.Sample]:
    """The ``cfg.batch`` training questions of step ``step``, cycling through ``types``."""
    return [
        task.make_sample(
            cfg.seed,
            "train",
            step * cfg.batch + i,
            qtype=types[(step * cfg.batch + i) % len(types)],
        )
        for i in range(cfg.batch)
    ]


def _schedule_length(
    cfg: TrainConfig, step: int, seconds: float, log: Callable[[str], None]
) -> int:
    """Steps that fit ``cfg.minutes`` at the speed of the first ``step`` steps (8 % spare)."""
    per_step = seconds / step
    total = max(step + 1, int(60 * cfg.minutes / (per_step * 1.08)))
    log(f"estimated {per_step:.2f} s/step -> schedule of {total} steps (--steps {total})")
    return total


def _forward(model, cfg: TrainConfig, batch: dict, samples, probe_pair, projected, image_token):
    """The model's output on ``batch`` and the probes' loss: the cell probes on the projector
    output ``projected`` captured by the forward hook, plus the named-object probe."""
    probes, named_probe = probe_pair
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        output = model(**batch, output_hidden_states=cfg.target_probe_weight > 0)
        probe_loss = probes(projected[0], cell_targets(samples))
        if cfg.target_probe_weight > 0:
            hidden = output.hidden_states[cfg.target_probe_layer]
            named_loss = named_probe_loss(
                named_probe, hidden, batch["input_ids"], samples, image_token
            )
            probe_loss = probe_loss + cfg.target_probe_weight * named_loss
    return output, probe_loss


def _new_probes(width: int) -> tuple[CellProbes, torch.nn.Linear]:
    """The training-only probes on ``width``-wide hidden states, drawn from the seeded generator
    in this order: :class:`CellProbes`, then the named-object probe."""
    probes = CellProbes(width)
    # Three classes although the labels are 0/1: the shipped checkpoint was trained with a third
    # (a second named object, for a two-object question type since dropped), and the probe's
    # initialisation draws from the seeded generator; kept so the run reproduces exactly.
    return probes, torch.nn.Linear(width, 3)


def _optimise(
    model, opt, cfg: TrainConfig, batch: dict, samples, probe_pair, projected, image_token
):
    """One optimiser step on the answer loss plus ``cfg.probe_weight`` times the probes' loss
    (:func:`_forward`), gradients clipped to norm 1; returns the output and the probes' loss."""
    output, probe_loss = _forward(model, cfg, batch, samples, probe_pair, projected, image_token)
    loss = output.loss + cfg.probe_weight * probe_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return output, probe_loss


class _Saver:
    """:func:`train`'s checkpoints: the best by validation accuracy under ``out``, and the last
    weights under ``out/last`` when not the best, at least every ``cfg.save_every_minutes`` and
    at the end. ``info`` (seed, params, later the schedule's steps) heads each one's metadata."""

    def __init__(self, model, processor, out: str, cfg: TrainConfig, info: dict, start, log):
        self.model, self.processor, self.out, self.cfg = model, processor, out, cfg
        self.info, self.start, self.log = info, start, log
        self.best, self.last_save = -1.0, start

    def due(self) -> bool:
        """Whether ``cfg.save_every_minutes`` have passed since the last save."""
        return time.time() - self.last_save > 60 * self.cfg.save_every_minutes

    def save(self, step: int, seen: int, acc: dict[str, float] | None, final: bool = False):
        """The best checkpoint when ``acc`` is at least the best so far, else the last weights
        when ``final`` or due."""
        elapsed = (time.time() - self.start) / 60
        meta = {**self.info, "step": step, "samples": seen, "minutes": round(elapsed, 2)}
        if acc is not None and acc["all"] >= self.best:
            self.best = acc["all"]
            demo_model.save(self.model, self.out, self.processor, {**meta, "validation": acc})
            self.log(f"  saved best checkpoint to {self.out} (validation {100 * self.best:.1f} %)")
        elif final or self.due():
            demo_model.save(self.model, os.path.join(self.out, "last"), self.processor, meta)
        self.last_save = time.time()


def train(
    cfg: TrainConfig,
    out: str,
    log: Callable[[str], None] = print,
    sizes: dict[str, int] | None = None,
):
    """Train from scratch; save the best checkpoint (by validation accuracy) under ``out``.

    Stops after ``cfg.steps`` steps or ``cfg.minutes`` minutes, whichever comes first. The
    checkpoint is refreshed at every evaluation that improves, at least every
    ``cfg.save_every_minutes`` (last weights under ``out/last`` when not the best) and at the end.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    enc = Encoder()
    processor = demo_model.build_processor(enc.tokenizer)
    config = demo_model.build_config(enc.tokenizer, **(sizes or {}))
    model = demo_model.build_model(config, cfg.seed)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    probes, named_probe = _new_probes(config.text_config.hidden_size)
    projected: list[torch.Tensor] = []
    capture = model.model.multi_modal_projector.register_forward_hook(
        lambda module, args, output: projected.append(output)
    )
    opt = torch.optim.AdamW(
        [*model.parameters(), *probes.parameters(), *named_probe.parameters()],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        weight_decay=cfg.weight_decay,
    )
    val = task.make_split(cfg.seed, "validation", cfg.eval_size)
    log(f"model: {params / 1e6:.2f} M parameters; config {cfg}")
    start = time.time()
    deadline = start + 60 * cfg.minutes
    total = cfg.steps or 10**9
    saver = _Saver(model, processor, out, cfg, {"seed": cfg.seed, "params": params}, start, log)
    seen, step = 0, 0
    stage, stage_steps, running = 0, 0, 0.0
    while step < total and time.time() < deadline:
        if step == 20 and cfg.steps is None:  # estimate the schedule length from measured speed
            total = saver.info["steps"] = _schedule_length(cfg, step, time.time() - start, log)
        lr = _lr_at(step, total if total < 10**9 else 10**6, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        samples = step_samples(cfg, step, STAGES[stage])
        batch = train_batch(samples, enc)
        projected.clear()
        output, probe_loss = _optimise(
            model, opt, cfg, batch, samples, (probes, named_probe), projected, enc.image
        )
        stage_steps += 1
        running = 0.95 * running + 0.05 * answer_accuracy(output.logits, batch["labels"])
        ready = stage_steps >= cfg.stage_min_steps and running >= cfg.stage_accuracy
        if (ready or stage_steps >= cfg.stage_max_steps) and stage + 1 < len(STAGES):
            why = "running accuracy reached" if ready else "stage_max_steps reached"
            log(f"step {step}: stage {stage + 1} {STAGES[stage + 1]} ({why}, {running:.2f})")
            stage, stage_steps, running = stage + 1, 0, 0.0
        step += 1
        seen += cfg.batch
        if step % 25 == 0:
            el = time.time() - start
            log(
                f"[{el / 60:6.2f} min] step {step} samples {seen} ({seen / el:.1f}/s) "
                f"loss {output.loss.item():.4f} probes {probe_loss.item():.4f} lr {lr:.2e} "
                f"stage {stage} train-acc {running:.2f}"
            )
        if step % cfg.eval_every == 0:
            acc = accuracy(model, val, enc)
            log(f"[{(time.time() - start) / 60:6.2f} min] step {step} validation {fmt(acc)}")
            saver.save(step, seen, acc)
        elif saver.due():
            saver.save(step, seen, None)
    acc = accuracy(model, val, enc)
    log(f"[{(time.time() - start) / 60:6.2f} min] final step {step} validation {fmt(acc)}")
    saver.save(step, seen, acc, final=True)
    capture.remove()
    return model, acc
