"""``visprune demo --video``: every method x budget per question type on the demo video model.

Evaluates the bundled video model (LLaVA-NeXT-Video, :mod:`video_model`) on the test clips of
:mod:`video_task`, unpruned and with every method at 11 %, 22 % and 33 % of each frame's
tokens, then prints and writes a table and a frames x kept-tokens picture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import video_task
from .run import BUDGETS, _methods, _positions

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


def evaluate(
    model_dir: str | Path | None = None,
    *,
    samples: int = 300,
    seed: int = 0,
    budgets: Sequence[float] = BUDGETS,
    methods: Sequence[str] | None = None,
    progress: bool = True,
    positions: str = "compact",
) -> list[dict]:
    """Accuracy per (method, budget) on the first ``samples`` test clips.

    Returns
    -------
    list of dict
        One row per configuration, as :func:`visprune.demo.run.evaluate`; ``tokens`` counts the
        visual tokens kept per frame.
    """
    import visprune

    from . import video_model
    from .video_train import VideoEncoder, accuracy

    model, tokenizer = video_model.load(model_dir or bundled_checkpoint())
    encoder = VideoEncoder(tokenizer)
    test = video_task.make_split(seed, "test", samples)
    configs: list[tuple[str, float | None]] = [("unpruned", None)]
    configs += [(m, b) for b in budgets for m in (methods or video_methods()[0])]
    if progress:
        from tqdm.auto import tqdm

        configs = tqdm(configs, desc="visprune demo --video", unit="config")
    rows = []
    accuracy(model, test[:4], encoder)  # warm-up: the first forward pays one-off costs
    for method, budget in configs:
        handle = None
        if budget is not None:
            handle = visprune.apply(
                model, method, budget=budget, positions=_positions(method, positions)
            )
        try:
            start = time.perf_counter()
            scores = accuracy(model, test, encoder)
            elapsed = time.perf_counter() - start
            cells = video_task.CELLS
            tokens = cells if handle is None else handle.method.num_keep(cells)
        finally:
            if handle is not None:
                handle.remove()
        rows.append(
            {
                "method": method,
                "budget": budget,
                "accuracy": scores["all"],
                "by_type": {k: v for k, v in scores.items() if k != "all"},
                "tokens": tokens,
                "time": elapsed,
            }
        )
    return rows


def table(rows: list[dict], samples: int, positions: str = "compact") -> str:
    """The results as a markdown table (accuracy in %, time relative to unpruned)."""
    base = next(row for row in rows if row["budget"] is None)
    types = list(base["by_type"])
    lines = [
        f"Demo video task, {samples} test clips of {video_task.FRAMES} frames x "
        f"{video_task.CELLS} tokens; the budget applies per frame; {positions} positions for the "
        "kept tokens; prefill time relative to unpruned.",
        "",
        "| method | budget | tokens per frame | accuracy | "
        + " | ".join(types)
        + " | prefill time |",
        "|---|---:|---:|---:|" + "---:|" * len(types) + "---:|",
    ]
    for row in rows:
        budget = "-" if row["budget"] is None else f"{row['budget']:.1%}"
        by_type = " | ".join(f"{100 * row['by_type'].get(t, 0.0):.1f}" for t in types)
        lines.append(
            f"| {row['method']} | {budget} | {row['tokens']} | {100 * row['accuracy']:.1f} | "
            f"{by_type} | {row['time'] / base['time']:.2f}x |"
        )
    skipped = video_methods()[1]
    if skipped:
        lines += [
            "",
            "Not run on video: " + "; ".join(f"{m} ({why})" for m, why in skipped.items()),
        ]
    return "\n".join(lines) + "\n"


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
    import torch
    from PIL import Image

    import visprune
    from visprune.viz import FramesRun, frames_sheet, stack
    from visprune.viz.text import BLACK

    from . import video_model
    from .video_train import VideoEncoder, prompt_batch

    model, tokenizer = video_model.load(model_dir or bundled_checkpoint())
    encoder = VideoEncoder(tokenizer)
    words = {i: w for w, i in encoder.vocab.items()}
    chosen = list(methods or video_methods()[0])
    clips = [video_task.make_clip(seed, "test", i) for i in range(len(video_task.QUESTION_TYPES))]
    runs: list[list[FramesRun]] = [[] for _ in clips]
    for method in ["unpruned", *chosen]:
        handle = None
        if method != "unpruned":
            handle = visprune.apply(
                model, method, budget=budget, positions=_positions(method, positions)
            )
        try:
            with torch.no_grad():
                logits = model(**prompt_batch(clips, encoder), logits_to_keep=1).logits
            kept = {(s.sample, s.frame): s for s in handle.selections} if handle else None
            tokens = handle.method.num_keep(video_task.CELLS) if handle else None
        finally:
            if handle is not None:
                handle.remove()
        for c, token in enumerate(logits[:, -1].argmax(-1).tolist()):
            frames = None if kept is None else [kept[(c, f)] for f in range(video_task.FRAMES)]
            runs[c].append(FramesRun(method, frames, words[token], tokens))
    header = [
        (
            f"visprune demo --video: the tokens each method keeps at {100 * budget:.0f} % of the "
            f"{video_task.CELLS} per frame, and the model's answer",
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
    out: str | Path = "visprune-demo",
    quick: bool = False,
    samples: int | None = None,
    log: Callable[[str], None] = print,
    positions: str = "compact",
    command: str | None = None,
) -> list[dict]:
    """Evaluate, print the table, write ``out/video_results.md`` (headed by ``command`` and the
    machine) and ``out/video_frames.png``."""
    out = Path(out)
    samples = samples or (30 if quick else 150)
    budgets = BUDGETS[:1] if quick else BUDGETS
    out.mkdir(parents=True, exist_ok=True)  # before the evaluation: a bad place fails at once
    rows = evaluate(model_dir, samples=samples, budgets=budgets, positions=positions)
    text = table(rows, samples, positions)
    log(text)  # printed before anything is written, so a failed write never loses it
    from ..bench import machine_description

    header = "# visprune demo --video\n\n" + (f"Command: `{command}`\n\n" if command else "")
    header += f"Machine: {machine_description()}\n\n"
    (out / "video_results.md").write_text(header + text)
    picture = frames_picture(model_dir, out / "video_frames.png", positions=positions)
    log(f"wrote {out / 'video_results.md'} and {picture}")
    return rows
