"""The demo model's v2 training recipe: LLaVA's three stages on the synthetic task (CPU).

1. **text**: the language model alone learns the task's language from text
   (:func:`corpus.text_sample`: questions answered from a scene written in words, scene
   descriptions repeated in order); the vision tower and projector are not used.
2. **captions**: the language model frozen (embeddings and head included), the vision tower and
   projector learn to caption images object by object (:func:`corpus.caption`). The caption can
   only come out of the frozen language model if the visual tokens are readable to it as the
   words it learned in stage 1: this is what puts the visual tokens near the words describing
   them (LLaVA's feature alignment; its vision tower is a pre-trained CLIP, the demo's is trained
   here, in this stage).
3. **questions**: everything tuned on the task's questions (answer loss only), one question
   type added at a time as in :mod:`visprune.demo.train`.

No loss looks at pruning or at text-visual similarity: the only losses are next-token
cross-entropies on text, captions and answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import corpus, grid_text, relevance, task
from . import model as demo_model
from .rows import caption_prompt, sequences
from .train import STAGES, Encoder, accuracy, answer_accuracy, fmt, named_probe_loss


@dataclass
class StageConfig:
    """One stage: ``steps`` optimizer steps of ``batch`` samples at peak rate ``lr``."""

    steps: int
    lr: float
    batch: int = 32
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05


@dataclass
class RecipeConfig:
    seed: int = 0
    threads: int = 2
    text: StageConfig = field(default_factory=lambda: StageConfig(steps=3000, lr=2e-3))
    captions: StageConfig = field(default_factory=lambda: StageConfig(steps=3000, lr=2e-3))
    questions: StageConfig = field(default_factory=lambda: StageConfig(steps=8000, lr=1e-3))
    #: How stage 1 writes a scene: "grid", cell by cell where the image will stand
    #: (:mod:`grid_text`), or "words", the objects in a row (:func:`corpus.text_sample`).
    text_scenes: str = "grid"
    #: Object counts (min, max) of stage 1's scenes (None: 1-14 for "grid"; 1-4 for "words",
    #: where at 8-14 objects the text stage learned no copying in 1,000 steps).
    text_objects: tuple[int, int] | None = None
    #: Object counts (min, max) of the captioned images.
    caption_objects: tuple[int, int] = (1, 4)
    #: Object counts (min, max) of the question stage's training images. The task is asked at
    #: 8-14 objects; mixing in scenes of 1-7 lets the model find the named object where there
    #: is little to choose from (one object: the only one that is not background), which gives
    #: the attention that finds it at 8-14 a gradient to start from.
    question_objects: tuple[int, int] = (task.MIN_OBJECTS, task.MAX_OBJECTS)
    #: A curriculum over object counts: the question stage's largest object count grows
    #: linearly from ``question_objects[0]`` to ``question_objects[1]`` over this many steps,
    #: so that the model finds the named object among few before many (0: the whole range from
    #: the first step).
    question_objects_ramp: int = 0
    #: Question stage: share of each batch that is captions (LLaVA's instruction mix keeps
    #: description data too), and whether the vision tower is tuned (LLaVA keeps it frozen).
    caption_share: float = 0.25
    tune_vision_tower: bool = False
    #: Question stage: the projector's (and tuned tower's) rate relative to the language
    #: model's; below 1 the language model learns to read the aligned tokens instead of the
    #: vision side moving them away from the words.
    vision_lr_ratio: float = 1.0
    #: Question stage: whether the language model's input embeddings are tuned. Frozen, the
    #: words keep the vectors the caption stage aligned the visual tokens with (measured: tuned,
    #: the alignment is lost within 2,000 steps unless stage 3 starts well aligned; README).
    tune_embeddings: bool = True
    #: Question stage: weight of the named-object probe (:func:`train.named_targets`, the v1
    #: model's), a linear probe on the language model's hidden states of the image tokens after
    #: layer ``named_probe_layer`` that says which tokens hold an object the question names
    #: (0: off). A training-only probe, not saved; it supervises the language model's finding
    #: the named object densely, neither pruning nor the similarity of visual tokens to words.
    #: Measured (README): with stage 1 in words it did not make the model find the named
    #: object sooner; after grid scenes, all five question types at step 5,000 (63 % without).
    named_probe_weight: float = 0.0
    named_probe_layer: int = 2
    #: A model saved after the caption stage (``<out>-aligned``): start from it at stage 3.
    aligned: str | None = None
    #: Question stage: move to the next question type (:data:`train.STAGES`) once the running
    #: training accuracy reaches ``type_accuracy`` (after at least ``type_min_steps``) or after
    #: ``type_max_steps``.
    type_accuracy: float = 0.9
    type_min_steps: int = 150
    type_max_steps: int = 2500
    eval_every: int = 500
    eval_size: int = 500


def text_batch(samples: Sequence[corpus.TextSample], enc: Encoder) -> dict[str, torch.Tensor]:
    """Stage 1: plain language modelling on every token of each text (and ``</s>``)."""
    rows = [([*enc.words(s.text), enc.eos], []) for s in samples]
    return sequences(rows, enc.pad, loss_on_prompt=True)


def caption_batch(samples: Sequence[task.Sample], enc: Encoder) -> dict[str, torch.Tensor]:
    """Stage 2: the caption after the prompt, loss on the caption and ``</s>``."""
    return question_batch((), enc, samples)


def question_batch(
    samples: Sequence[task.Sample], enc: Encoder, captioned: Sequence[task.Sample] = ()
) -> dict[str, torch.Tensor]:
    """Stage 3: the task's prompt, loss on the answer and ``</s>``; then the ``captioned``
    images' caption rows (as :func:`caption_batch`), if any."""
    rows = [(enc.prompt(s), [*enc.words(s.answer), enc.eos]) for s in samples]
    prompt = caption_prompt(enc)
    rows += [(prompt, [*enc.words(corpus.caption(s)), enc.eos]) for s in captioned]
    batch = sequences(rows, enc.pad)
    images = [s.image for s in [*samples, *captioned]]
    batch["pixel_values"] = torch.from_numpy(task.normalize(np.stack(images)))
    return batch


def question_objects_at(cfg: RecipeConfig, step: int) -> tuple[int, int]:
    """Object counts (min, max) of question-stage step ``step``'s images
    (``cfg.question_objects``, the largest count ramped over ``cfg.question_objects_ramp``)."""
    low, high = cfg.question_objects
    if cfg.question_objects_ramp <= 0 or step >= cfg.question_objects_ramp:
        return low, high
    return low, low + (high - low) * step // cfg.question_objects_ramp


def question_samples(
    cfg: RecipeConfig, step: int, types: Sequence[str], count: int
) -> list[task.Sample]:
    """The ``count`` training questions of question-stage step ``step``, cycling through
    ``types``, on images of :func:`question_objects_at` objects."""
    base = step * count
    objects = question_objects_at(cfg, step)
    return [
        task.make_sample(
            cfg.seed,
            "train",
            base + i,
            qtype=types[(base + i) % len(types)],
            objects=objects,
        )
        for i in range(count)
    ]


def caption_samples(cfg: RecipeConfig, step: int, count: int) -> list[task.Sample]:
    """The ``count`` captioned images mixed into question-stage step ``step`` (indices far
    beyond those of the caption stage, so none repeats)."""
    first = 10**8 + step * count
    return [
        task.make_sample(cfg.seed, "caption", first + i, objects=cfg.caption_objects)
        for i in range(count)
    ]


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


def text_objects(cfg: RecipeConfig) -> tuple[int, int]:
    """Object counts (min, max) of stage 1's scenes (``cfg.text_objects`` or its default)."""
    if cfg.text_objects is not None:
        return cfg.text_objects
    return (1, task.MAX_OBJECTS) if cfg.text_scenes == "grid" else (1, 4)


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


@torch.no_grad()
def text_accuracy(model, enc: Encoder, seed: int, count: int, objects) -> dict[str, float]:
    """Stage-1 check on validation scenes: answers right (questions) and whole repeated
    descriptions right (teacher forcing)."""
    samples = [
        corpus.text_sample(seed, i, split="validation", objects=objects) for i in range(count)
    ]
    out = {}
    for kind in ("question", "describe"):
        chosen = [s for s in samples if s.kind == kind]
        rows = []
        for s in chosen:
            words = [*enc.words(s.text), enc.eos]
            if kind == "question":  # the answer word and </s>
                cut = len(words) - 2
            else:  # the repeated description and </s>
                cut = len(words) - len(enc.words(s.text.split(corpus.DESCRIBE)[-1])) - 1
            rows.append((words[:cut], words[cut:]))
        batch = sequences(rows, enc.pad)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out[kind] = exact_accuracy(logits, batch["labels"])
    return out


@torch.no_grad()
def grid_accuracy(model, enc: Encoder, seed: int, count: int, objects) -> dict[str, float]:
    """Stage-1 check on validation scenes written cell by cell (:mod:`grid_text`): answers
    right (questions) and whole captions right (teacher forcing)."""
    out = {}
    for kind in ("question", "describe"):
        indices = [i for i in range(count) if grid_text.kind_of(i) == kind]
        samples = [task.make_sample(seed, "validation", i, objects=objects) for i in indices]
        batch = grid_text.grid_batch(model, samples, [kind] * len(samples), enc)
        out[kind] = exact_accuracy(model(**batch).logits, batch["labels"])
    return out


@torch.no_grad()
def caption_accuracy(model, enc: Encoder, seed: int, count: int, objects) -> dict[str, float]:
    """Stage-2 check on validation images: caption tokens and whole captions right."""
    samples = [task.make_sample(seed, "validation", i, objects=objects) for i in range(count)]
    batch = caption_batch(samples, enc)
    logits = model(**batch).logits
    return {
        "token": token_accuracy(logits, batch["labels"]),
        "caption": exact_accuracy(logits, batch["labels"]),
    }


def relevance_line(model, enc: Encoder, samples: Sequence[task.Sample]) -> str:
    """Median rank and top-7 share of the answer token by text relevance (single-object)."""
    ranks = relevance.answer_ranks(model, samples, enc)
    stats = relevance.summary(ranks)
    return (
        f"answer token by text relevance: median rank {stats['median']:.0f} of {task.NUM_CELLS}, "
        f"top-7 {100 * stats['top7']:.1f} % ({len(ranks)} questions)"
    )


def align(model, cfg: RecipeConfig, enc: Encoder, val, out: str, processor, log) -> None:
    """Stages 1 (text) and 2 (captions, language model frozen); saves ``<out>-aligned``."""

    scenes = text_objects(cfg)
    if cfg.text_scenes not in ("grid", "words"):
        raise ValueError(f"text_scenes={cfg.text_scenes!r}: choose 'grid' or 'words'")

    def text_eval(step: int) -> None:
        check = grid_accuracy if cfg.text_scenes == "grid" else text_accuracy
        acc = check(model, enc, cfg.seed, cfg.eval_size, scenes)
        log(
            f"  text step {step}: questions {100 * acc['question']:.1f} % "
            f"descriptions {100 * acc['describe']:.1f} %"
        )

    def text_step(step: int):
        base = step * cfg.text.batch
        if cfg.text_scenes == "grid":
            indices = range(base, base + cfg.text.batch)
            samples = [task.make_sample(cfg.seed, "text", i, objects=scenes) for i in indices]
            kinds = [grid_text.kind_of(i) for i in indices]
            return grid_text.grid_batch(model, samples, kinds, enc)
        samples = [
            corpus.text_sample(cfg.seed, base + i, objects=scenes) for i in range(cfg.text.batch)
        ]
        return text_batch(samples, enc)

    run_stage(
        "text",
        model,
        language_parameters(model),
        cfg.text,
        text_step,
        log,
        evaluate=text_eval,
        every=cfg.eval_every,
    )

    def caption_eval(step: int) -> None:
        acc = caption_accuracy(model, enc, cfg.seed, 200, cfg.caption_objects)
        log(
            f"  captions step {step}: tokens {100 * acc['token']:.1f} % "
            f"whole {100 * acc['caption']:.1f} %; {relevance_line(model, enc, val)}"
        )

    def caption_step(step: int):
        base = step * cfg.captions.batch
        samples = [
            task.make_sample(cfg.seed, "caption", base + i, objects=cfg.caption_objects)
            for i in range(cfg.captions.batch)
        ]
        return caption_batch(samples, enc)

    run_stage(
        "captions",
        model,
        vision_parameters(model),
        cfg.captions,
        caption_step,
        log,
        evaluate=caption_eval,
        every=cfg.eval_every,
    )

    demo_model.save(model, f"{out}-aligned", processor, {"seed": cfg.seed, "stage": 2})
    log(f"stages 1-2 done: saved to {out}-aligned")


def train(cfg: RecipeConfig, out: str, log: Callable[[str], None] = print, sizes=None):
    """Run the three stages from scratch (or stage 3 from ``cfg.aligned``); save the final
    model under ``out`` (with ``cfg.questions.steps == 0``, stop after stages 1-2, saved
    under ``<out>-aligned``)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    enc = Encoder()
    processor = demo_model.build_processor(enc.tokenizer)
    if cfg.aligned is None:
        config = demo_model.build_config(enc.tokenizer, **(sizes or {}))
        model = demo_model.build_model(config, cfg.seed)
    else:
        model = demo_model.load(cfg.aligned)[0]
        log(f"stages 1-2: loaded from {cfg.aligned}")
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e6:.2f} M parameters; recipe {cfg}")
    val = task.make_split(cfg.seed, "validation", cfg.eval_size)
    began = time.time()

    if cfg.aligned is None:
        align(model, cfg, enc, val, out, processor, log)
    if cfg.questions.steps == 0:  # stages 1-2 only: stage 3 starts later from <out>-aligned
        return model

    curriculum = {"stage": 0, "steps": 0, "running": 0.0}
    captions = round(cfg.questions.batch * cfg.caption_share)
    questions = cfg.questions.batch - captions
    width = model.config.text_config.hidden_size
    named_probe = torch.nn.Linear(width, 2)
    current: dict[str, list[task.Sample]] = {}

    def question_step(step: int):
        samples = current["samples"] = question_samples(
            cfg, step, STAGES[curriculum["stage"]], questions
        )
        batch = question_batch(samples, enc, caption_samples(cfg, step, captions))
        if cfg.named_probe_weight > 0:
            batch["output_hidden_states"] = True
        return batch

    def probe_loss(output, batch) -> torch.Tensor:
        hidden = output.hidden_states[cfg.named_probe_layer][:questions]
        image_ids = batch["input_ids"][:questions]
        loss = named_probe_loss(named_probe, hidden, image_ids, current["samples"], enc.image)
        return cfg.named_probe_weight * loss

    def advance(step: int, output, batch) -> None:
        curriculum["steps"] += 1
        right = answer_accuracy(output.logits[:questions], batch["labels"][:questions])
        run = curriculum["running"] = 0.95 * curriculum["running"] + 0.05 * right
        ready = curriculum["steps"] >= cfg.type_min_steps and run >= cfg.type_accuracy
        if (ready or curriculum["steps"] >= cfg.type_max_steps) and curriculum["stage"] + 1 < len(
            STAGES
        ):
            curriculum.update(stage=curriculum["stage"] + 1, steps=0, running=0.0)
            log(f"step {step + 1}: question types {STAGES[curriculum['stage']]} ({run:.2f})")

    best = {"all": -1.0}

    def question_eval(step: int) -> None:
        acc = accuracy(model, val, enc)
        log(f"  questions step {step}: validation {fmt(acc)}; {relevance_line(model, enc, val)}")
        if acc["all"] >= best["all"]:
            best.update(acc)
            demo_model.save(
                model,
                out,
                processor,
                {
                    "seed": cfg.seed,
                    "params": params,
                    "step": step,
                    "minutes": round((time.time() - began) / 60, 2),
                    "validation": acc,
                },
            )
            log(f"  saved to {out}")

    vision = list(model.model.multi_modal_projector.parameters())
    if cfg.tune_vision_tower:
        vision += list(model.model.vision_tower.parameters())
    tuned = [*language_parameters(model), *vision]
    if not cfg.tune_embeddings:
        frozen = {id(p) for p in model.get_input_embeddings().parameters()}
        tuned = [p for p in tuned if id(p) not in frozen]
    probed = cfg.named_probe_weight > 0
    run_stage(
        "questions",
        model,
        [*tuned, *named_probe.parameters()] if probed else tuned,
        cfg.questions,
        question_step,
        log,
        evaluate=question_eval,
        every=cfg.eval_every,
        on_step=advance,
        slower=vision,
        slower_ratio=cfg.vision_lr_ratio,
        extra_loss=probe_loss if probed else None,
    )
    return model
