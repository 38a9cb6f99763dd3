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
from .run import BUDGETS, demo_methods, positions_note, sweep_demo

CHECKPOINT = Path(__file__).parent / "video_checkpoint"


def video_methods() -> tuple[list[str], dict[str, str]]:
    """``(methods that run on video frames, {method: why not} for the others)``.

    Methods scoring tokens by the tower's CLS attention or keys (VisionZip, VisPruner) have
    nothing to read on LLaVA-NeXT-Video frames, which are pooled after the tower.
    """
    import visprune
    from visprune.methods.context import VISION_NEEDS

    runnable, skipped = [], {}
    for name in demo_methods():
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
    """Frames x kept tokens: per question type one test clip, its question and right answer
    above its frames as numbered tiles; a row per method (unpruned first, with the answer's
    cells outlined), the dropped tokens masked, the model's answer (right or wrong) at its head."""
    from PIL import Image

    from visprune.methods.budget import resolve_budget
    from visprune.viz import FramesRun, frames_sheet, stack
    from visprune.viz.text import BLACK

    from . import video_model
    from .answers import answers_per_method
    from .video_evaluate import VideoEncoder, prompt_batch

    model, tokenizer = video_model.load(model_dir or bundled_checkpoint())
    encoder = VideoEncoder(tokenizer)
    clips = [video_task.make_clip(seed, "test", i) for i in range(len(video_task.QUESTION_TYPES))]
    runs: list[list[FramesRun]] = [[] for _ in clips]
    for method, selections, tokens, answers in answers_per_method(
        model,
        prompt_batch(clips, encoder),
        encoder.vocab,
        list(methods or video_methods()[0]),
        budget=budget,
        positions=positions,
        tokens=video_task.CELLS,
    ):
        kept = None if selections is None else {(s.sample, s.frame): s for s in selections}
        for c, answer in enumerate(answers):
            frames = None if kept is None else [kept[(c, f)] for f in range(video_task.FRAMES)]
            runs[c].append(FramesRun(method, frames, answer, tokens))
    per_frame = resolve_budget(budget, video_task.CELLS)
    header = [
        (
            f"visprune demo --video: the {per_frame} of {video_task.CELLS} tokens per frame each "
            f"method keeps (budget {100 * budget:.0f} %), and the model's answer",
            BLACK,
        )
    ]
    sheets = [
        frames_sheet(
            [Image.fromarray(frame) for frame in clip.frames],
            runs[c],
            question=clip.question,
            expected=clip.answer,
            grid=(video_task.GRID,) * 2,
            targets=clip.targets,
            title=header if c == 0 else (),
            notes=c == 0,
        ).picture
        for c, clip in enumerate(clips)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    stack(sheets).save(path)
    return path


def run(
    model_dir: str | Path | None = None,
    *,
    out: str | Path = "visprune-demo/video",
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
    methods = video_methods()[0]
    note = (
        f"Demo video task, {samples} test clips of {video_task.FRAMES} frames x "
        f"{video_task.CELLS} tokens; the budget applies per frame (visual tokens: per clip); "
        f"{positions_note(positions, methods)}; prefill FLOPs exact "
        "(visprune.flops.model_flops), relative to unpruned."
    )
    text = sweep_demo(
        "demo-video",
        model_dir,
        out,
        samples=samples,
        budgets=BUDGETS[:1] if quick else BUDGETS,
        positions=positions,
        methods=methods,
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
