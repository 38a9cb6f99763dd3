"""The ``visprune`` command line: its subcommands and where each runs.

Options live in :mod:`visprune.cli_arguments` (``sweep``'s in :mod:`visprune.sweep.command`),
the checks made before any model loads in :mod:`visprune.cli_checks`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .cli_arguments import (
    DEMO_OUT,
    DEMO_VIDEO_OUT,
    HelpFormatter,
    bench_arguments,
    demo_arguments,
    generate_arguments,
)
from .cli_checks import check_demo_checkpoint, check_output_folder, check_paths, first_line
from .cli_model import load, open_image, prompt_inputs

#: ``visprune demo``'s running times, measured on an idle 2-core CPU (as in the README).
DEMO_TIMES = (
    "On an idle 2-core CPU the image and the video demo take about 30 s together (make "
    "demo); --quick takes about 5 s."
)

#: What the ``alignment`` row of ``bench`` measures (visprune.metrics.alignment_report).
ALIGNMENT_LEGEND = (
    "alignment: the kept visual tokens against all of them, as the language model receives "
    "them (mean over images): w2 = Bures-Wasserstein distance of Gaussians fitted to each "
    "(lower is closer), coverage = mean cosine distance from a dropped token to its nearest "
    "kept one (lower is better), relevance = share of the prompt-relevance mass kept (higher "
    "is better)."
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``visprune`` and its subcommands (``args.command`` names the one given,
    ``args.command_parser`` is its parser, for errors found after parsing)."""
    from .sweep.command import add_arguments as sweep_arguments

    parser = argparse.ArgumentParser(
        prog="visprune", description="Training-free visual-token pruning for multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=f"visprune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, formatter_class=HelpFormatter, **kwargs)
        sub.set_defaults(command_parser=sub)  # errors after parsing show this command's usage
        return sub

    command("methods", help="list the selection methods, what each reads, and their parameters")
    bench_arguments(
        command(
            "bench",
            help="time a model unpruned or with a method: TTFT, decode, KV cache, FLOPs",
            description="Benchmark one image + prompt on a local (or cached) Hugging Face VLM.",
        )
    )
    demo_arguments(
        command(
            "demo",
            help="accuracy of every method on the bundled demo model (offline)",
            description="Evaluate the bundled demo model unpruned and with every method at 11, "
            f"22 and 33 % of the visual tokens. {DEMO_TIMES}",
        )
    )
    sweep_arguments(
        command(
            "sweep",
            help="accuracy of methods x budgets on a model and tasks, with plots (resumable)",
            description="Evaluate a model unpruned and with each method at each budget, on the "
            "bundled demo task or on lmms-eval tasks; results.jsonl grows as each configuration "
            "finishes (an interrupted sweep resumes), then results.md, accuracy_vs_tokens.png "
            "and accuracy_vs_flops.png are drawn from it.",
        )
    )
    generate_arguments(
        command(
            "generate",
            help="answer a prompt about an image, optionally pruned, with a kept-token picture",
            description="Generate with a local (or cached) Hugging Face VLM, pruned or not.",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command = args.command_parser
    if args.command == "methods":
        from .cli_methods import methods_table

        print(methods_table())
        return 0
    from .compat import warn_if_untested

    warn_if_untested()  # now, before any progress bar starts
    if args.command == "bench":
        return _bench(command, args)
    if args.command == "generate":
        from .cli_generate import run as generate

        return generate(command, args)
    if args.command == "sweep":
        from .sweep.command import main as sweep_main

        return sweep_main(command, args, _command_line(argv))
    return _demo(command, args, argv)


def _command_line(argv: Sequence[str] | None) -> str:
    """The command as typed, for the head of a results file."""
    return shlex.join(["visprune", *(sys.argv[1:] if argv is None else argv)])


def _load_bench(args: argparse.Namespace) -> tuple[Any, dict]:
    """Load model and processor from ``args.model`` and build the inputs of one image + prompt."""
    model, processor = load(args.model, args.device)
    return model, prompt_inputs(model, processor, open_image(args.image), args.prompt)


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .bench import format_table, measure, resolve_method
    from .compiled import SelectionNotCompilable

    check_paths(parser, args)
    params = dict(args.param)
    try:
        chosen = resolve_method(args.method, args.budget, params)  # fail before loading the model
    except (KeyError, ValueError) as error:
        parser.error(str(error).strip("'\""))
    if args.compile and chosen is None:
        parser.error("--compile needs --method")
    try:
        model, inputs = _load_bench(args)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load --model {args.model!r}: {first_line(error)}")
    try:
        result = measure(
            model,
            inputs,
            args.method,
            args.budget,
            new_tokens=args.new_tokens,
            warmup=args.warmup,
            repeats=args.repeats,
            progress=not args.json,
            positions=args.positions,
            compile=args.compile,
            **params,
        )
    except (KeyError, ValueError, SelectionNotCompilable) as error:
        parser.error(first_line(error))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_table(result))
        if result.alignment:
            print(ALIGNMENT_LEGEND)
    return 0


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> int:
    if args.video:
        from .demo.video_run import run
    else:
        from .demo.run import run

    if args.model is not None:
        check_demo_checkpoint(parser, args.model, args.video)
    out = args.out if args.out is not None else (DEMO_VIDEO_OUT if args.video else DEMO_OUT)
    check_output_folder(parser, "--out", out)
    from .sweep.command import check_matplotlib

    check_matplotlib(parser)  # the demo draws the sweep's plots
    if not args.quick:
        print(f"visprune demo: {DEMO_TIMES}", file=sys.stderr)
    try:
        run(
            args.model,
            out=out,
            quick=args.quick,
            samples=args.samples,
            positions=args.positions,
            command=_command_line(argv),
        )
    except FileNotFoundError as error:
        print(f"visprune demo: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
