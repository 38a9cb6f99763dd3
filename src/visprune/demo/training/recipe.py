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
   type added at a time as in :mod:`visprune.demo.training.train`.

No loss looks at pruning or at text-visual similarity: the only losses are next-token
cross-entropies on text, captions and answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .. import model as demo_model
from .. import task
from ..evaluate import Encoder, accuracy, fmt
from . import corpus, grid_text
from .checks import caption_accuracy, grid_accuracy, relevance_line, text_accuracy
from .rows import caption_batch, question_batch, text_batch
from .stages import (
    BestCheckpoint,
    Curriculum,
    StageConfig,
    language_parameters,
    run_stage,
    vision_parameters,
)
from .train import STAGES, answer_accuracy, named_probe_loss


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


def text_objects(cfg: RecipeConfig) -> tuple[int, int]:
    """Object counts (min, max) of stage 1's scenes (``cfg.text_objects`` or its default)."""
    if cfg.text_objects is not None:
        return cfg.text_objects
    return (1, task.MAX_OBJECTS) if cfg.text_scenes == "grid" else (1, 4)


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

    questions_stage(model, cfg, enc, val, out, processor, log, params=params, began=began)


def questions_stage(
    model,
    cfg: RecipeConfig,
    enc: Encoder,
    val: Sequence[task.Sample],
    out: str,
    processor,
    log: Callable[[str], None],
    *,
    params: int,
    began: float,
) -> None:
    """Stage 3: everything tuned on the task's questions, one question type added at a time
    (:data:`~visprune.demo.training.train.STAGES`), with captions mixed in; saves the best model
    by validation accuracy under ``out`` (``params`` and ``began`` go into its metadata)."""
    curriculum = Curriculum(STAGES, cfg.type_accuracy, cfg.type_min_steps, cfg.type_max_steps, log)
    captions = round(cfg.questions.batch * cfg.caption_share)
    questions = cfg.questions.batch - captions
    width = model.config.text_config.hidden_size
    named_probe = torch.nn.Linear(width, 2)
    current: dict[str, list[task.Sample]] = {}

    def question_step(step: int):
        samples = current["samples"] = question_samples(cfg, step, curriculum.types, questions)
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
        right = answer_accuracy(output.logits[:questions], batch["labels"][:questions])
        curriculum.update(step, right)

    best = BestCheckpoint(lambda info: demo_model.save(model, out, processor, info), out, log)

    def question_eval(step: int) -> None:
        acc = accuracy(model, val, enc)
        log(f"  questions step {step}: validation {fmt(acc)}; {relevance_line(model, enc, val)}")
        best.offer(acc, seed=cfg.seed, params=params, step=step, began=began)

    tuned, vision = questions_parameters(model, cfg)
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


def questions_parameters(model, cfg: RecipeConfig) -> tuple[list, list]:
    """The parameters stage 3 tunes, and the vision side among them (projector, and the tower
    if ``cfg.tune_vision_tower``), which learns at ``cfg.vision_lr_ratio`` times the rate."""
    vision = list(model.model.multi_modal_projector.parameters())
    if cfg.tune_vision_tower:
        vision += list(model.model.vision_tower.parameters())
    tuned = [*language_parameters(model), *vision]
    if not cfg.tune_embeddings:
        frozen = {id(p) for p in model.get_input_embeddings().parameters()}
        tuned = [p for p in tuned if id(p) not in frozen]
    return tuned, vision
