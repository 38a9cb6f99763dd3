"""``visprune demo``: accuracy of every method at three budgets on the bundled demo model.

Evaluates the bundled model (or any checkpoint written by :func:`visprune.demo.model.save`) on
the test split of the synthetic task, unpruned and with every method at 11 %, 22 % and 33 % of
the visual tokens, then prints and writes a table (method x budget -> accuracy, visual tokens
kept, exact prefill FLOPs relative to unpruned) as a sweep (:mod:`visprune.sweep`, with its
plots) and saves kept-token overlays of a few examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from . import model as demo_model
from . import task

BUDGETS = (0.111, 0.222, 0.333)
CHECKPOINT = Path(__file__).parent / "checkpoint"


def bundled_checkpoint() -> Path:
    """The checkpoint shipped inside the package; a clear error when it is missing."""
    if not (CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(
            f"no bundled demo checkpoint at {CHECKPOINT}; train one with "
            "`python scripts/train_demo_model.py --out src/visprune/demo/checkpoint`."
        )
    return CHECKPOINT


def demo_methods() -> list[str]:
    """Every registered method but ``keepall``, which would only repeat the unpruned row."""
    import visprune

    return [name for name in visprune.list_methods() if name != "keepall"]


def positions_note(positions: str, methods: Sequence[str]) -> str:
    """The table header's words on positions: the methods that prune inside the language model
    keep the original positions whatever ``positions`` says (:mod:`visprune.sweep.grid`)."""
    import visprune

    note = f"{positions} positions for the kept tokens"
    in_llm = [name for name in methods if visprune.METHODS[name].stage == "layer"]
    if positions != "original" and in_llm:
        note += f"; the in-LLM methods ({', '.join(in_llm)}) keep their original positions"
    return note


def evaluate(
    model_dir: str | Path | None = None,
    *,
    samples: int = 500,
    seed: int = 0,
    budgets: Sequence[float] = BUDGETS,
    methods: Sequence[str] | None = None,
    progress: bool = True,
    positions: str = "compact",
) -> list[dict]:
    """Accuracy per (method, budget) on the first ``samples`` test questions.

    ``positions`` is :func:`visprune.apply`'s option: ``"compact"`` renumbers the kept tokens
    (as the published LLaVA code does), ``"original"`` keeps their place in the full sequence.

    Returns
    -------
    list of dict
        One row per configuration: ``method``, ``budget`` (None unpruned), ``accuracy`` (all
        question types), ``by_type`` (per question type), ``tokens`` (visual tokens kept per
        image) and ``prefill_flops_ratio`` (exact prefill FLOPs relative to unpruned).
    """
    from ..sweep.demo_runner import DemoRunner
    from ..sweep.grid import plan

    runner = DemoRunner("demo", model_dir, samples, seed)
    configurations = plan(["demo"], list(methods or demo_methods()), budgets, [positions])
    if progress:
        from tqdm.auto import tqdm

        configurations = tqdm(configurations, desc="visprune demo", unit="config")
    rows = []
    for configuration in configurations:
        result = runner.run(configuration)
        metrics = result["metrics"]
        rows.append(
            {
                "method": configuration.method,
                "budget": configuration.budget,
                "accuracy": metrics["accuracy"],
                "by_type": {
                    k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("accuracy/")
                },
                "tokens": result["visual_tokens"],
                "prefill_flops_ratio": result["prefill_flops_ratio"],
            }
        )
    return rows


def sweep_demo(
    task_name: str,
    model_dir: str | Path | None,
    out: Path,
    *,
    samples: int,
    budgets: Sequence[float],
    positions: str,
    methods: Sequence[str],
    heading: str,
    note: str,
    command: str | None,
    log: Callable[[str], None],
    results_name: str,
    footer: str = "",
) -> str:
    """The demo as a sweep (:mod:`visprune.sweep`) into ``out``: a fresh ``results.jsonl``
    (the demo always measures anew), the plots, and ``out/results_name`` headed by ``heading``,
    ``command``, the machine and ``note``; returns the table it printed."""
    from ..bench import machine_description
    from ..sweep import execute, prepare, render
    from ..sweep import records as store
    from ..sweep import table as sweep_table

    out.mkdir(parents=True, exist_ok=True)  # before the evaluation: a bad place fails at once
    (out / store.RESULTS).unlink(missing_ok=True)
    sweep = prepare(
        model=None if model_dir is None else str(model_dir),
        tasks=[task_name],
        methods=methods,
        budgets=budgets,
        positions=[positions],
        limit=samples,
        out=out,
        command=command,
    )
    records = execute(sweep)
    text = sweep_table.tables(records) + "\n" + footer
    log(f"{note}\n\n{text}")  # printed before anything is written, so a failed write never loses it
    render(records, out, command, table=False)  # the plots; the table is the demo's own
    header = f"# {heading}\n\n" + (f"Command: `{command}`\n\n" if command else "")
    header += f"Machine: {machine_description()}\n\n{note}\n\n"
    (out / results_name).write_text(header + text)
    return text


def overlays(
    model_dir: str | Path | None,
    path: Path,
    *,
    examples: int = 4,
    budget: float = BUDGETS[0],
    seed: int = 0,
    methods: Sequence[str] | None = None,
    positions: str = "compact",
) -> Path:
    """One picture: a column per test question (headed by the question and its right answer), a
    row per method (unpruned first), each panel the image enlarged 3 times with the dropped
    tokens masked, framed and captioned by the model's answer, right or wrong."""
    from PIL import Image

    from visprune.viz import (
        MASK_NOTE,
        Panel,
        answer_line,
        budget_text,
        frame_colour,
        overlay,
        table,
    )
    from visprune.viz.text import BLACK, GREY

    from .answers import answers_per_method
    from .evaluate import Encoder, prompt_batch

    model, processor = demo_model.load(model_dir or bundled_checkpoint())
    encoder = Encoder(processor.tokenizer)
    picks = task.make_split(seed, "test", examples)
    scale = 3  # 64 px images at 192 px: each token's 8 px patch shows as 24 px
    images = [
        Image.fromarray(s.image).resize((task.IMAGE_SIZE * scale,) * 2, Image.NEAREST)
        for s in picks
    ]
    panels, heads = [], []
    for method, kept, tokens, answers in answers_per_method(
        model,
        prompt_batch(picks, encoder),
        encoder.vocab,
        list(methods or demo_methods()),
        budget=budget,
        positions=positions,
        tokens=task.NUM_CELLS,
    ):
        tokens = task.NUM_CELLS if tokens is None else tokens
        heads.append([(method, BLACK), (budget_text(tokens, task.NUM_CELLS), GREY)])
        panels.append(
            [
                Panel(
                    image if kept is None else overlay(image, kept[i], grid=(task.GRID,) * 2),
                    [answer_line(answers[i], sample.answer, prefix="")],
                    frame_colour(answers[i], sample.answer),
                )
                for i, (image, sample) in enumerate(zip(images, picks, strict=True))
            ]
        )
    title = [
        (
            f"visprune demo: the tokens each method keeps at {100 * budget:.0f} % of the "
            f"{task.NUM_CELLS} per image, and the model's answer (frame and words: right or wrong)",
            BLACK,
        ),
        (MASK_NOTE, GREY),
    ]
    columns = [[(f"Q: {s.question}", BLACK), (f"right answer: {s.answer}", GREY)] for s in picks]
    sheet = table(panels, title=title, column_heads=columns, row_heads=heads)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.picture.save(path)
    return path


def relevance_line(model_dir: str | Path | None, samples: int, seed: int = 0) -> str:
    """How near the model's visual tokens sit to their words: the answer token's median rank
    and top-7 share by text relevance (:mod:`.relevance`) on the single-object questions among
    the first ``samples`` test questions."""
    from . import relevance
    from .evaluate import Encoder

    model, processor = demo_model.load(model_dir or bundled_checkpoint())
    questions = task.make_split(seed, "test", samples)
    ranks = relevance.answer_ranks(model, questions, Encoder(processor.tokenizer))
    stats = relevance.summary(ranks)
    return (
        f"Answer token by text relevance (cosine to the question after the image; "
        f"{len(ranks)} single-object questions): median rank {stats['median']:.0f} of "
        f"{task.NUM_CELLS}, among the top 7 for {100 * stats['top7']:.1f} % (random: 11 %)."
    )


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
    """Sweep every method at :data:`BUDGETS` on the demo task, print the table, write
    ``out/results.md`` (headed by ``command``, the command line that ran it, and the machine),
    ``out/results.jsonl``, ``out/accuracy_vs_tokens.png``, ``out/accuracy_vs_flops.png`` and
    ``out/overlays.png``; returns the table."""
    out = Path(out)
    samples = samples or (60 if quick else 500)
    if model_dir is None:
        bundled_checkpoint()  # a missing checkpoint says how to train one, before anything runs
    methods = demo_methods()
    note = (
        f"Demo task, {samples} test questions; {positions_note(positions, methods)}; "
        "prefill FLOPs exact (visprune.flops.model_flops), relative to unpruned."
    )
    text = sweep_demo(
        "demo",
        model_dir,
        out,
        samples=samples,
        budgets=BUDGETS[:1] if quick else BUDGETS,
        positions=positions,
        methods=methods,
        heading="visprune demo",
        note=note,
        command=command,
        log=log,
        results_name="results.md",
        footer=relevance_line(model_dir, samples) + "\n",
    )
    examples = 2 if quick else 4
    picture = overlays(model_dir, out / "overlays.png", examples=examples, positions=positions)
    log(f"wrote {out / 'results.md'}, the plots and {picture}")
    return text
