"""``visprune sweep`` on the command line: its options, the checks made before any model loads
(each refusal one line and exit status 2), the run, and the rendering."""

from __future__ import annotations

import argparse
import sys

from ..cli_checks import check_demo_checkpoint, check_model, check_output_folder
from . import records as store
from .demo_runner import DEMO_TASKS
from .grid import POSITIONS, parse_budget, parse_list


def add_arguments(command: argparse.ArgumentParser) -> None:
    """The options of ``visprune sweep``."""
    command.add_argument(
        "--model",
        default=None,
        help="checkpoint folder or hub id (default: the bundled demo model for the demo tasks)",
    )
    command.add_argument(
        "--tasks",
        default=None,
        help="comma-separated: demo, demo-video (bundled) or lmms-eval task names (default: demo)",
    )
    command.add_argument(
        "--methods",
        default=None,
        help="comma-separated method names (default: every method; `visprune methods` lists "
        "them); the unpruned reference always runs",
    )
    command.add_argument(
        "--budgets",
        default=None,
        help="comma-separated budgets per image/frame: counts (64) or fractions (0.25)",
    )
    command.add_argument(
        "--positions",
        default=None,
        help="comma-separated position modes to sweep: compact, original (default: the "
        "model family's)",
    )
    command.add_argument(
        "--limit", type=int, default=None, help="questions per task (demo: 500, video: 150)"
    )
    command.add_argument(
        "--batch-size", type=int, default=1, help="requests per generate call (lmms-eval tasks)"
    )
    command.add_argument(
        "--out", default="visprune-sweep", help="folder of results.jsonl, results.md and plots"
    )
    command.add_argument(
        "--render-only",
        action="store_true",
        help="redraw results.md and the plots from --out's results.jsonl without running",
    )


def check_matplotlib(parser: argparse.ArgumentParser) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("the sweep draws its plots with matplotlib: pip install 'visprune[plot]'")


def main(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> int:
    """Check, run what is not recorded yet, render; 0 on success."""
    from .run import execute, prepare, render

    check_matplotlib(parser)
    check_output_folder(parser, "--out", args.out)
    if args.render_only:
        try:
            records = store.load(args.out)
            paths = render(records, args.out, command)
        except ValueError as error:
            parser.error(str(error))
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
        return 0
    try:
        sweep = prepare(**_plan_arguments(parser, args), out=args.out, command=command)
    except ValueError as error:
        parser.error(str(error))
    try:
        records = execute(sweep, log=lambda line: print(line, file=sys.stderr))
    except KeyboardInterrupt:
        done = len(store.load(sweep.out))
        print(
            f"visprune sweep: interrupted; {done} configurations are in "
            f"{sweep.out / store.RESULTS}; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    paths = render(records, args.out, command)
    print(
        "wrote " + ", ".join(str(p) for p in [sweep.out / store.RESULTS, *paths]), file=sys.stderr
    )
    return 0


def _plan_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """``prepare``'s arguments from the command line; refuses what it can tell without Python
    objects (a missing budget list, a bad number, a model folder of the wrong kind)."""
    import visprune

    if args.budgets is None:
        parser.error("--budgets is required: counts (64,128) or fractions (0.111,0.222)")
    try:
        budgets = [parse_budget(b) for b in parse_list(args.budgets, "--budgets")]
        tasks = parse_list(args.tasks, "--tasks") if args.tasks else None
        methods = (
            parse_list(args.methods, "--methods")
            if args.methods
            else [m for m in visprune.list_methods() if m != "keepall"]
        )
        positions = parse_list(args.positions, "--positions") if args.positions else [None]
    except ValueError as error:
        parser.error(str(error))
    for mode in positions:
        if mode not in (None, *POSITIONS):
            parser.error(f"--positions {mode!r}: choose from {', '.join(POSITIONS)}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.model is not None:
        demo = [t for t in tasks or ["demo"] if t in DEMO_TASKS]
        if tasks is None:
            parser.error(
                "--model needs --tasks: lmms-eval task names, or demo / demo-video for a demo "
                "checkpoint"
            )
        if demo and len(demo) < len(tasks):
            parser.error("--tasks mixes bundled demo tasks and lmms-eval tasks; sweep them apart")
        if len(demo) > 1:
            parser.error("--tasks demo and demo-video need different models; sweep them apart")
        if demo:
            check_demo_checkpoint(parser, args.model, demo[0] == "demo-video")
        else:
            check_model(parser, args.model)
    return {
        "model": args.model,
        "tasks": tasks,
        "methods": methods,
        "budgets": budgets,
        "positions": positions,
        "limit": args.limit,
        "batch_size": args.batch_size,
    }
