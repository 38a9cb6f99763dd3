"""Train the bundled demo LLaVA from scratch on the synthetic visual-QA task (CPU).

    python scripts/train_demo_model.py --out src/visprune/demo/checkpoint --minutes 65 --seed 0

``--recipe llava`` runs LLaVA's three stages instead (:mod:`visprune.demo.training.recipe`: text,
then captions with the language model frozen, then questions), sized by ``--text-steps``,
``--caption-steps`` and ``--question-steps``.

Logs validation accuracy per question type with timestamps to stdout and OUT/train_log.txt, keeps
the best checkpoint (safetensors) in OUT, loadable with ``LlavaForConditionalGeneration`` /
``AutoProcessor.from_pretrained(OUT)``, and reports test accuracy (unpruned and random 11 %).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    """The command line: the schedule, the recipe and each recipe's stage options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--minutes", type=float, default=65.0, help="wall-clock training budget")
    p.add_argument("--steps", type=int, default=None, help="schedule length (default: estimated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250, help="steps between validations")
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--target-probe-weight", type=float, default=1.0, help="named-object probe (0: off)"
    )
    p.add_argument("--text-layers", type=int, default=None, help="language-model layers")
    p.add_argument(
        "--recipe",
        choices=["questions", "llava", "video"],
        default="questions",
        help="questions: one stage with probes (the v1 image model); llava: three stages (the "
        "image model); video: the LLaVA-NeXT-Video model on clips (--question-steps steps)",
    )
    p.add_argument(
        "--text-scenes",
        choices=["grid", "words"],
        default="grid",
        help="stage 1: scenes cell by cell where the image stands (grid) or objects in a row",
    )
    p.add_argument("--text-steps", type=int, default=1500)
    p.add_argument("--caption-steps", type=int, default=1500)
    p.add_argument(
        "--question-steps",
        type=int,
        default=20000,
        help="stage 3 steps (llava: 0 stops after stages 1-2, saved as OUT-aligned)",
    )
    p.add_argument("--caption-share", type=float, default=0.25, help="captions in stage-3 batches")
    p.add_argument("--tune-vision-tower", action="store_true", help="stage 3: tune the tower too")
    p.add_argument(
        "--vision-lr-ratio", type=float, default=1.0, help="stage 3: vision-side rate / LM rate"
    )
    p.add_argument(
        "--freeze-embeddings", action="store_true", help="stage 3: keep the word embeddings"
    )
    for flag, stage in (("--question-objects", "stage 3"), ("--text-objects", "stage 1")):
        p.add_argument(
            flag,
            type=int,
            nargs=2,
            default=None,
            metavar=("MIN", "MAX"),
            help=f"{stage}: object counts of the scenes (default: the recipe's)",
        )
    p.add_argument(
        "--question-objects-ramp",
        type=int,
        default=0,
        metavar="STEPS",
        help="stage 3: grow the largest object count from MIN to MAX over STEPS steps (0: off)",
    )
    p.add_argument(
        "--named-probe-weight",
        type=float,
        default=0.0,
        help="stage 3: the named-object probe on the language model (0: off)",
    )
    p.add_argument("--aligned", default=None, help="start at stage 3 from a saved OUT-aligned")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.question_objects_ramp < 0:
        p.error(f"--question-objects-ramp {args.question_objects_ramp}: give 0 (off) or more steps")
    if args.recipe == "llava" and args.question_steps == 0 and args.aligned:
        p.error("--question-steps 0 with --aligned trains nothing: give stage 3 some steps")

    from visprune.demo.training import train as demo_train

    os.makedirs(args.out, exist_ok=True)
    logfile = open(os.path.join(args.out, "train_log.txt"), "a", buffering=1)

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")

    log(f"command: {' '.join(sys.argv)}")
    sizes = {} if args.text_layers is None else {"text_layers": args.text_layers}
    if args.recipe == "video":
        from visprune.demo.training import video_train

        cfg = video_train.VideoConfig(seed=args.seed, threads=args.threads)
        cfg.questions.steps = args.question_steps
        cfg.eval_every = args.eval_every
        video_train.train(cfg, args.out, log, sizes=sizes)
        return report_video(args, log, logfile)
    if args.recipe == "llava":
        from visprune.demo.training import recipe

        recipe.train(recipe_config(args), args.out, log, sizes=sizes)
        if args.question_steps == 0:  # stages 1-2 only
            logfile.close()
            return 0
        return report(args, log, logfile)
    cfg = demo_train.TrainConfig(
        minutes=args.minutes,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        eval_every=args.eval_every,
        seed=args.seed,
        threads=args.threads,
        target_probe_weight=args.target_probe_weight,
    )
    demo_train.train(cfg, args.out, log, sizes=sizes)
    return report(args, log, logfile)


def recipe_config(args: argparse.Namespace):
    """The three-stage recipe's settings (``--recipe llava``) from the command line."""
    from visprune.demo.training import recipe

    cfg = recipe.RecipeConfig(seed=args.seed, threads=args.threads)
    cfg.text.steps = args.text_steps
    cfg.text_scenes = args.text_scenes
    cfg.captions.steps = args.caption_steps
    cfg.questions.steps = args.question_steps
    cfg.caption_share = args.caption_share
    cfg.tune_vision_tower = args.tune_vision_tower
    cfg.vision_lr_ratio = args.vision_lr_ratio
    cfg.aligned = args.aligned
    cfg.named_probe_weight = args.named_probe_weight
    if args.question_objects:
        cfg.question_objects = tuple(args.question_objects)
    cfg.question_objects_ramp = args.question_objects_ramp
    if args.text_objects:
        cfg.text_objects = tuple(args.text_objects)
    cfg.tune_embeddings = not args.freeze_embeddings
    cfg.eval_every = args.eval_every
    return cfg


def report(args, log, logfile) -> int:
    """Test accuracy of the saved checkpoint, unpruned and random at 11 %, and (v2) the answer
    token's rank by text relevance."""
    import torch

    from visprune.demo import evaluate, relevance, task
    from visprune.demo import model as demo_model

    torch.set_num_threads(args.threads)
    model, _ = demo_model.load(args.out)
    enc = evaluate.Encoder()
    test = task.make_split(args.seed, "test", args.test_size)
    acc = evaluate.accuracy(model, test, enc)
    log(f"test (best checkpoint, {len(test)} samples) unpruned: {evaluate.fmt(acc)}")
    rnd = evaluate.pruned_accuracy(model, test, enc, "random", 0.111)
    log(f"test random 11 %: {evaluate.fmt(rnd)}")
    log(f"random-pruning drop: {100 * (acc['all'] - rnd['all']):.1f} points")
    stats = relevance.summary(relevance.answer_ranks(model, test, enc))
    log(
        f"answer token by text relevance (single-object test questions): median rank "
        f"{stats['median']:.0f} of {task.NUM_CELLS}, top-7 {100 * stats['top7']:.1f} %"
    )
    logfile.close()
    return 0


def report_video(args, log, logfile) -> int:
    """Test accuracy of the saved video checkpoint, unpruned and random at 11 % per frame."""
    import torch

    import visprune
    from visprune.demo import video_evaluate, video_model, video_task

    torch.set_num_threads(args.threads)
    model, tokenizer = video_model.load(args.out)
    enc = video_evaluate.VideoEncoder(tokenizer)
    test = video_task.make_split(args.seed, "test", args.test_size)
    acc = video_evaluate.accuracy(model, test, enc)
    log(f"test (best checkpoint, {len(test)} clips) unpruned: {video_evaluate.fmt(acc)}")
    with visprune.apply(model, "random", budget=0.111):
        rnd = video_evaluate.accuracy(model, test, enc)
    log(f"test random 11 % per frame: {video_evaluate.fmt(rnd)}")
    log(f"random-pruning drop: {100 * (acc['all'] - rnd['all']):.1f} points")
    logfile.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
