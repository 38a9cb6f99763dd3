"""Running a sweep: plan and check everything, then run the configurations not yet recorded,
appending each record as it finishes, then draw the table and the plots from the records."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import records as store
from .demo_runner import DEMO_TASKS, DemoRunner
from .grid import Configuration, plan

#: What a sweep writes besides ``results.jsonl``.
OUTPUTS = ("results.md", "accuracy_vs_tokens.png", "accuracy_vs_flops.png")


@dataclass
class Sweep:
    """A checked sweep: its configurations and a runner per task (nothing loaded yet).

    Attributes
    ----------
    configurations : list of Configuration
        In run order.
    runners : dict
        Task name -> runner (:class:`~.demo_runner.DemoRunner` or
        :class:`~.lmms_runner.LmmsEvalRunner`), each loading its model at its first run.
    out : Path
        The folder of ``results.jsonl`` and the rendered files.
    model : str
        The model as records name it.
    command : str or None
        The command line, written at the head of ``results.md``.
    """

    configurations: list[Configuration]
    runners: dict[str, Any]
    out: Path
    model: str
    command: str | None = None
    existing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending(self) -> list[Configuration]:
        """Configurations without a record in ``results.jsonl``."""
        done = store.latest(self.existing)
        return [c for c in self.configurations if c.key not in done]


def prepare(
    *,
    model: str | None = None,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str],
    budgets: Sequence[int | float],
    positions: Sequence[str | None] = (None,),
    limit: int | None = None,
    out: str | Path,
    batch_size: int = 1,
    command: str | None = None,
) -> Sweep:
    """Check every name, budget, task and the output folder, and plan the sweep; loads no model.

    With no ``model`` and no ``tasks`` the sweep runs the bundled demo model on the ``demo``
    task. ``demo`` and ``demo-video`` are the bundled tasks (``model``, if given, must be a demo
    checkpoint); every other task is an lmms-eval task, run through visprune's lmms-eval plugin on
    ``model``.

    Raises
    ------
    ValueError
        Anything that would fail later, with what to do instead.
    """
    tasks = list(tasks or ["demo"])
    configurations = plan(tasks, methods, budgets, positions)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    runners: dict[str, Any] = {}
    lmms_tasks = [t for t in tasks if t not in DEMO_TASKS]
    for task in tasks:
        if task in DEMO_TASKS:
            runners[task] = DemoRunner(task, model, limit)
    if lmms_tasks:
        runners.update(_lmms_runners(model, lmms_tasks, limit, batch_size))
    named = {runner.describe() for runner in runners.values()}
    out = Path(out)
    existing = store.load(out)
    sweep = Sweep(configurations, runners, out, ", ".join(sorted(named)), command, existing)
    _check_same_sweep(sweep, limit)
    return sweep


def _lmms_runners(
    model: str | None, tasks: list[str], limit: int | None, batch_size: int
) -> dict[str, Any]:
    if model is None:
        raise ValueError(
            f"--tasks {','.join(tasks)}: lmms-eval tasks need --model (a checkpoint folder or hub "
            "id); without --model the sweep runs the bundled demo model on --tasks demo"
        )
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        raise ValueError(
            f"--tasks {','.join(tasks)} are lmms-eval tasks; install the eval extra: pip install "
            "'visprune[eval]'"
        ) from None
    from .lmms_runner import LmmsEvalRunner, check_tasks, task_manager

    manager = task_manager()
    simple = check_tasks(tasks, manager)
    runner = LmmsEvalRunner(
        model, limit=limit, batch_size=batch_size, simple=simple, manager=manager
    )
    return dict.fromkeys(tasks, runner)


def _check_same_sweep(sweep: Sweep, limit: int | None) -> None:
    """Records already in ``out`` must come from the same model and limit: resuming must not mix
    two sweeps in one table."""
    for record in sweep.existing:
        runner = sweep.runners.get(record["task"])
        if runner is None:
            continue
        if record["model"] != runner.describe() or record["limit"] != runner.limit:
            raise ValueError(
                f"{sweep.out / store.RESULTS} holds a sweep of {record['model']} with limit "
                f"{record['limit']} on {record['task']}, not of {runner.describe()} with limit "
                f"{runner.limit}; use another --out (or the same --model and --limit to resume)"
            )


def execute(
    sweep: Sweep, *, progress: bool = True, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run every pending configuration, appending its record as it finishes; returns all
    records of ``results.jsonl`` afterwards.

    One progress bar counts configurations (those already recorded count as done).
    """
    pending = sweep.pending
    total = len(sweep.configurations)
    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(pending), desc="visprune sweep", unit="config")
    if pending and sweep.existing and log is not None:
        log(f"resuming: {total - len(pending)} of {total} configurations already in results.jsonl")
    sweep.out.mkdir(parents=True, exist_ok=True)
    try:
        for configuration in pending:
            if bar is not None:
                bar.set_postfix_str(configuration.label)
            runner = sweep.runners[configuration.task]
            result = runner.run(configuration)
            store.append(sweep.out, _record(configuration, result, runner))
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    sweep.existing = store.load(sweep.out)
    return sweep.existing


def _record(configuration: Configuration, result: dict[str, Any], runner: Any) -> dict[str, Any]:
    return {
        "task": configuration.task,
        "method": configuration.method,
        "params": configuration.params,
        "budget": configuration.budget,
        "positions": configuration.positions,
        "metrics": result["metrics"],
        "visual_tokens": result["visual_tokens"],
        "visual_tokens_unpruned": result["visual_tokens_unpruned"],
        "prefill_flops_ratio": result["prefill_flops_ratio"],
        "seconds": result["seconds"],
        "samples": result["limit"],
        "model": runner.describe(),
        "limit": runner.limit,
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "versions": store.versions(),
    }


def render(
    records: Sequence[dict[str, Any]],
    out: str | Path,
    command: str | None = None,
    *,
    table: bool = True,
) -> list[Path]:
    """Write ``results.md`` (unless ``table`` is False) and both plots from ``records`` (the
    last record of each configuration); returns the paths written."""
    from . import plots
    from . import table as tables

    if not records:
        raise ValueError(f"{Path(out) / store.RESULTS} holds no records to render; run the sweep")
    latest = list(store.latest(records).values())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if table:
        (out / "results.md").write_text(tables.render(latest, command))
        written.append(out / "results.md")
    return [*written, *plots.draw(latest, out)]
