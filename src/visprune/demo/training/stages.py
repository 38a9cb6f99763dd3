"""One stage of the v2 recipe: AdamW steps on a chosen set of parameters, the rest frozen, with
warm-up and cosine decay, and the teacher-forcing accuracies its checks read."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class StageConfig:
    """One stage: ``steps`` optimizer steps of ``batch`` samples at peak rate ``lr``."""

    steps: int
    lr: float
    batch: int = 32
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of labelled tokens predicted exactly (teacher forcing)."""
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    labelled = target != -100
    return float((predicted[labelled] == target[labelled]).float().mean())


def exact_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose every labelled token is predicted exactly (teacher forcing)."""
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    wrong = (predicted != target) & (target != -100)
    return float((~wrong.any(-1)).float().mean())


def _lr_at(step: int, cfg: StageConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def language_parameters(model) -> list[torch.nn.Parameter]:
    """The language model's parameters: embeddings, decoder layers, final norm, head."""
    return [*model.model.language_model.parameters(), *model.lm_head.parameters()]


def vision_parameters(model) -> list[torch.nn.Parameter]:
    """The vision tower's and the projector's parameters."""
    return [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]


def set_trainable(model, parameters: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Freeze every parameter of ``model`` except ``parameters`` (returned as a list)."""
    chosen = list(parameters)
    keep = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return chosen


def run_stage(
    name: str,
    model,
    parameters: list[torch.nn.Parameter],
    cfg: StageConfig,
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    log: Callable[[str], None],
    *,
    evaluate: Callable[[int], None] | None = None,
    every: int = 500,
    on_step: Callable[[int, object, dict], None] | None = None,
    slower: Sequence[torch.nn.Parameter] = (),
    slower_ratio: float = 1.0,
    extra_loss: Callable[[object, dict], torch.Tensor] | None = None,
) -> None:
    """``cfg.steps`` AdamW steps on ``parameters`` (warm-up then cosine decay).

    ``make_batch(step)`` builds the step's batch; ``on_step(step, output, batch)`` sees every
    step's output (curricula); ``evaluate(step)`` runs every ``every`` steps and at the end.
    The ``slower`` parameters (a subset of ``parameters``) learn at ``slower_ratio`` times the
    rate. ``extra_loss(output, batch)``, if given, is added to the model's loss (training-only
    probes; their parameters belong in ``parameters``).
    """
    set_trainable(model, parameters)
    model.train()
    slow = {id(p) for p in slower}
    groups = [
        {"params": [p for p in parameters if id(p) not in slow], "ratio": 1.0},
        {"params": [p for p in parameters if id(p) in slow], "ratio": slower_ratio},
    ]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    start = time.time()
    running = 0.0
    for step in range(cfg.steps):
        lr = _lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr * group["ratio"]
        batch = make_batch(step)
        output = model(**batch)
        loss = output.loss if extra_loss is None else output.loss + extra_loss(output, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        opt.step()
        running = 0.95 * running + 0.05 * token_accuracy(output.logits, batch["labels"])
        if on_step is not None:
            on_step(step, output, batch)
        if (step + 1) % 50 == 0:
            elapsed = time.time() - start
            log(
                f"[{name} {elapsed / 60:6.2f} min] step {step + 1}/{cfg.steps} "
                f"loss {output.loss.item():.4f} token-acc {running:.3f} lr {lr:.2e}"
            )
        if evaluate is not None and ((step + 1) % every == 0 or step + 1 == cfg.steps):
            model.eval()
            evaluate(step + 1)
            model.train()
    set_trainable(model, model.parameters())


class Curriculum:
    """Question types added one at a time, on the running training accuracy.

    Moves from ``stages[i]`` to ``stages[i + 1]`` once the running accuracy (an exponential
    average, 0.95 / 0.05) reaches ``accuracy`` after at least ``min_steps`` steps of the
    stage, or after ``max_steps`` whatever the accuracy; the last stage stays.
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, ...]],
        accuracy: float,
        min_steps: int,
        max_steps: int,
        log: Callable[[str], None],
    ) -> None:
        self.stages, self.accuracy = stages, accuracy
        self.min_steps, self.max_steps, self.log = min_steps, max_steps, log
        self.stage, self.steps, self.running = 0, 0, 0.0

    @property
    def types(self) -> tuple[str, ...]:
        """The question types of the current stage."""
        return self.stages[self.stage]

    def update(self, step: int, right: float) -> None:
        """Count optimizer step ``step`` (0-based) whose batch answered ``right`` of its
        questions, and move on when the stage is done."""
        self.steps += 1
        self.running = 0.95 * self.running + 0.05 * right
        ready = self.steps >= self.min_steps and self.running >= self.accuracy
        if (ready or self.steps >= self.max_steps) and self.stage + 1 < len(self.stages):
            run = self.running
            self.stage, self.steps, self.running = self.stage + 1, 0, 0.0
            self.log(f"step {step + 1}: question types {self.types} ({run:.2f})")


class BestCheckpoint:
    """Saves the model at every evaluation whose validation accuracy (``"all"``) is at least the
    best so far, with its metadata: ``seed``, ``params``, ``step``, ``minutes`` since the
    training began and the ``validation`` accuracies.

    Parameters
    ----------
    save : callable
        ``save(info)`` writes the model with ``info`` as its ``demo_info.json``.
    out : str
        Where ``save`` writes, for the log line.
    log : callable
        Progress lines.
    """

    def __init__(self, save: Callable[[dict], None], out: str, log: Callable[[str], None]):
        self.save, self.out, self.log = save, out, log
        self.best = -1.0

    def offer(
        self, acc: dict[str, float], *, seed: int, params: int, step: int, began: float
    ) -> None:
        """Save when ``acc["all"]`` is at least the best so far (``began``: ``time.time()`` at
        the start of the training)."""
        if acc["all"] < self.best:
            return
        self.best = acc["all"]
        minutes = round((time.time() - began) / 60, 2)
        info = {"seed": seed, "params": params, "step": step, "minutes": minutes}
        self.save({**info, "validation": acc})
        self.log(f"  saved to {self.out}")
