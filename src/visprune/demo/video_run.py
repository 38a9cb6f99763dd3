"""``visprune demo --video``: every method x budget per question type on the demo video model.

Evaluates the bundled video model (LLaVA-NeXT-Video, :mod:`video_model`) on the test clips of
:mod:`video_task`, unpruned and with every method at 11 %, 22 % and 33 % of each frame's
tokens, as a sweep (:mod:`visprune.sweep`, with its plots), then prints and writes a table and a
frames x kept-tokens picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from . import video_task
from .run import BUDGETS, _methods, _positions, sweep_demo

CHECKPOINT = Path(__file__).parent / "video_checkpoint"


def video_methods() -> tuple[list[str], dict[str, str]]:
    """``(methods that run on video frames, {method: why not} for the others)``.

    Methods scoring tokens by the tower's CLS attention or keys (VisionZip, VisPruner) have
    nothing to read on LLaVA-NeXT-Video frames, which are pooled after the tower.
    """
    import visprune
    from visprune.methods.base import VISION_NEEDS

    runnable, skipped = [], {}
    for name in _methods():
        needs = sorted(visprune.METHODS[name].requires & VISION_NEEDS.keys())
        if needs:
            skipped[name] = f"needs {', '.join(needs)}, which pooled video frames do not have"
        else:
            runnable.append(name)
    return runnable, skipped


def bundled_checkpoint() -> Path:
    """The video checkpoint shipped inside the package; a clear error when it is missing."""
    if not (CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(
            f"no bundled demo video checkpoint at {CHECKPOINT}; train one with `python "
            "scripts/train_demo_model.py --recipe video --out src/visprune/demo/video_checkpoint`."
        )
    return CHECKPOINT


def not_run_line() -> str:
    """The methods the video demo leaves out, and why (empty when it runs every one)."""
    skipped = video_methods()[1]
    if not skipped:
        return ""
    return "Not run on video: " + "; ".join(f"{m} ({why})" for m, why in skipped.items()) + "\n"


def frames_picture(
    model_dir: str | Path | None,
    path: Path,
    *,
    budget: float = BUDGETS[0],
    seed: int = 0,
    methods: Sequence[str] | None = None,
    positions: str = "compact",
) -> Path:
    """Frames x kept tokens: per question type one test clip, a row per method (kept patches
    bright), a column per frame; the first row shows the clip with the answer's cells outlined."""
    import torch
    from PIL import Image, ImageDraw

    import visprune
    from visprune.viz import overlay

    from . import video_model
    from .video_train import VideoEncoder, prompt_batch

    model, tokenizer = video_model.load(model_dir or bundled_checkpoint())
    encoder = VideoEncoder(tokenizer)
    chosen = list(methods or video_methods()[0])
    clips = [video_task.make_clip(seed, "test", i) for i in range(len(video_task.QUESTION_TYPES))]
    kept: dict[str, dict[tuple[int, int], object]] = {}
    for method in chosen:
        with (
            visprune.apply(
                model, method, budget=budget, positions=_positions(method, positions)
            ) as handle,
            torch.no_grad(),
        ):
            model(**prompt_batch(clips, encoder), logits_to_keep=1)
            kept[method] = {(s.sample, s.frame): s for s in handle.selections}
    scale, label, title = 3, 96, 14
    size = video_task.FRAME_SIZE * scale
    rows_per_clip = 1 + len(chosen)
    block = title + size * rows_per_clip
    sheet = Image.new("RGB", (label + size * video_task.FRAMES, block * len(clips)), "white")
    draw = ImageDraw.Draw(sheet)
    patch = video_task.task.PATCH * scale
    for c, clip in enumerate(clips):
        top = c * block
        draw.text((2, top + 1), f"{clip.question} -> {clip.answer}", fill="black")
        for r, method in enumerate(["clip", *chosen]):
            y = top + title + r * size
            draw.text((2, y + size // 2 - 6), method[:15], fill="black")
            for f in range(video_task.FRAMES):
                frame = Image.fromarray(clip.frames[f]).resize((size, size), Image.NEAREST)
                if method != "clip":
                    frame = overlay(frame, kept[method][(c, f)], grid=(video_task.GRID,) * 2)
                x = label + f * size
                sheet.paste(frame, (x, y))
                if method == "clip":
                    for tf, cell in clip.targets:
                        if tf == f:
                            row, col = divmod(cell, video_task.GRID)
                            box = [x + col * patch, y + row * patch]
                            box += [box[0] + patch - 1, box[1] + patch - 1]
                            draw.rectangle(box, outline=(255, 0, 0), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def run(
    model_dir: str | Path | None = None,
    *,
    out: str | Path = "visprune-demo",
    quick: bool = False,
    samples: int | None = None,
    log: Callable[[str], None] = print,
    positions: str = "compact",
    command: str | None = None,
) -> str:
    """Sweep every method that runs on video at :data:`BUDGETS` of each frame's tokens, print
    the table, write ``out/video_results.md`` (headed by ``command`` and the machine), the
    sweep's ``results.jsonl`` and plots, and ``out/video_frames.png``; returns the table."""
    out = Path(out)
    samples = samples or (30 if quick else 150)
    if model_dir is None:
        bundled_checkpoint()  # a missing checkpoint says how to train one, before anything runs
    note = (
        f"Demo video task, {samples} test clips of {video_task.FRAMES} frames x "
        f"{video_task.CELLS} tokens; the budget applies per frame (visual tokens: per clip); "
        f"{positions} positions for the kept tokens; prefill FLOPs exact "
        "(visprune.flops.model_flops), relative to unpruned."
    )
    text = sweep_demo(
        "demo-video",
        model_dir,
        out,
        samples=samples,
        budgets=BUDGETS[:1] if quick else BUDGETS,
        positions=positions,
        methods=video_methods()[0],
        heading="visprune demo --video",
        note=note,
        command=command,
        log=log,
        results_name="video_results.md",
        footer=not_run_line(),
    )
    picture = frames_picture(model_dir, out / "video_frames.png", positions=positions)
    log(f"wrote {out / 'video_results.md'}, the plots and {picture}")
    return text
