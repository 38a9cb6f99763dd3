"""The ``visprune`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .cli_checks import check_demo_checkpoint, check_output_folder, check_paths, first_line
from .registry import METHODS

#: What each kind of context a method reads is, in the ``methods`` table.
NEEDS = {
    "text": "prompt text",
    "query": "text query",
    "cls_attention": "vision CLS attention",
    "vision_keys": "vision keys",
    "cls_state": "vision CLS state",
    "scores": "LLM attention rows",
}

#: In-LLM methods read ``scores`` of the kind their ``signal`` names.
SCORE_SIGNALS = {"attention": "LLM attention rows", "keys": "LLM key norms"}


def _needs(cls: type) -> str:
    """What ``cls`` reads besides the visual tokens: its ``requires`` (needed) and the rest of
    its ``uses`` (read when given), e.g. ``prompt text; optional: text query``."""
    names = dict(NEEDS, scores=SCORE_SIGNALS.get(getattr(cls, "signal", None), NEEDS["scores"]))
    needed = [names.get(name, name) for name in sorted(cls.requires)]
    optional = [names.get(name, name) for name in sorted(cls.uses - cls.requires)]
    parts = [", ".join(needed)] if needed else []
    if optional:
        parts.append("optional: " + ", ".join(optional))
    return "; ".join(parts) or "tokens only"


def _methods_table() -> str:
    rows = [("name", "stage", "needs", "parameters")]
    for name in METHODS.names():
        cls = METHODS[name]
        params = ", ".join(
            f"{field.name}={field.default!r}"
            for field in dataclasses.fields(cls)
            if field.name != "budget"
        )
        rows.append((name, cls.stage, _needs(cls), params or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` lists each option's default, except where there is none to show (None, False,
    an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visprune", description="Training-free visual-token pruning for multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=f"visprune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, formatter_class=_HelpFormatter, **kwargs)
        sub.set_defaults(command_parser=sub)  # errors after parsing show this command's usage
        return sub

    command("methods", help="list the selection methods, what each reads, and their parameters")
    bench = command(
        "bench",
        help="time a model unpruned or with a method: TTFT, decode, KV cache, FLOPs",
        description="Benchmark one image + prompt on a local (or cached) Hugging Face VLM.",
    )
    _model_arguments(bench)
    bench.add_argument("--image", default=None, help="image file (default: a grey 336x336)")
    bench.add_argument("--prompt", default="Describe this image.", help="the question")
    bench.add_argument("--new-tokens", type=_positive(2), default=16, help="tokens to decode")
    bench.add_argument("--repeats", type=_positive(1), default=5, help="timed rounds")
    bench.add_argument("--warmup", type=_positive(0), default=1, help="untimed rounds first")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.add_argument(
        "--compile",
        action="store_true",
        help="run the method's selection as one torch.compile graph (visprune.apply's compile); "
        "the first warmup round compiles",
    )
    demo = command(
        "demo",
        help="accuracy of every method on the bundled demo model (offline)",
        description="Evaluate the bundled demo model unpruned and with every method at 11, 22 "
        f"and 33 %% of the visual tokens. {DEMO_TIMES}",
    )
    demo.add_argument(
        "--video",
        action="store_true",
        help="the demo video model (LLaVA-NeXT-Video, 8-frame clips) instead of the image model",
    )
    demo.add_argument(
        "--quick", action="store_true", help="one budget (11 %%), 60 questions (30 clips)"
    )
    demo.add_argument(
        "--samples", type=_positive(1), default=None, help="test questions (default: 500)"
    )
    demo.add_argument("--model", default=None, help="a demo checkpoint (default: bundled)")
    demo.add_argument("--out", default="visprune-demo", help="folder for results and overlays")
    demo.add_argument(
        "--positions",
        choices=("compact", "original"),
        default="compact",
        help="position ids of the kept tokens (visprune.apply's option)",
    )
    sweep = command(
        "sweep",
        help="accuracy of methods x budgets on a model and tasks, with plots (resumable)",
        description="Evaluate a model unpruned and with each method at each budget, on the "
        "bundled demo task or on lmms-eval tasks; results.jsonl grows as each configuration "
        "finishes (an interrupted sweep resumes), then results.md, accuracy_vs_tokens.png and "
        "accuracy_vs_flops.png are drawn from it.",
    )
    from .sweep.command import add_arguments as sweep_arguments

    sweep_arguments(sweep)
    generate = command(
        "generate",
        help="answer a prompt about an image, optionally pruned, with a kept-token picture",
        description="Generate with a local (or cached) Hugging Face VLM, pruned or not.",
    )
    _model_arguments(generate)
    generate.add_argument("--image", required=True, help="image file")
    generate.add_argument("--prompt", required=True, help="the question")
    generate.add_argument(
        "--max-new-tokens", type=_positive(1), default=32, help="longest answer, in tokens"
    )
    generate.add_argument(
        "--viz",
        default=None,
        metavar="PNG",
        help="save the kept-token picture: the view the model saw with the dropped tokens "
        "masked, the prompt, method, budget and answer",
    )
    generate.add_argument(
        "--expected",
        default=None,
        metavar="ANSWER",
        help="the right answer: the --viz picture marks the model's answer right or wrong",
    )
    generate.add_argument(
        "--compile",
        action="store_true",
        help="run the method's selection as one torch.compile graph (visprune.apply's compile)",
    )
    return parser


#: ``visprune demo``'s running times, measured on an idle 2-core CPU (as in the README).
DEMO_TIMES = (
    "On an idle 2-core CPU the image and the video demo take about 30 s together (make "
    "demo); --quick takes about 5 s."
)


def _model_arguments(command: argparse.ArgumentParser) -> None:
    """The model, method and device options shared by ``bench`` and ``generate``."""
    command.add_argument("--model", required=True, help="model directory or hub id")
    command.add_argument("--method", default=None, help="method name (default: unpruned)")
    command.add_argument("--budget", type=_budget, default=None, help="count or fraction")
    command.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_param,
        help="method hyperparameter (repeatable); VALUE is parsed as JSON, else a string",
    )
    command.add_argument(
        "--positions",
        choices=("compact", "original"),
        default=None,
        help="position ids of the kept tokens (visprune.apply's option; default: the family's, "
        "compact for LLaVA and Gemma 3, original for Qwen-VL)",
    )
    command.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda if any)")


def _budget(text: str) -> int | float:
    try:
        value = float(text) if any(c in text for c in ".eEinfINF") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"budget must be a finite count or fraction (e.g. 64 or 0.25), got {text!r}"
        )
    if value <= 0:
        raise argparse.ArgumentTypeError(f"budget must be positive, got {text!r}")
    return value


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _positive(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _load(model_id: str, device: str | None) -> tuple[Any, Any]:
    """Model and processor from a local directory (or a cached hub id)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_id)
    model = AutoModelForImageTextToText.from_pretrained(model_id, dtype="auto").eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), processor


def _prompt_inputs(model: Any, processor: Any, image: Any, prompt: str) -> dict:
    """Processor inputs for one image and prompt: the chat template when the processor has one,
    else the prompt with the image placeholder in front."""
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:
        placeholder = getattr(processor, "image_token", "<image>")
        text = prompt if placeholder in prompt else f"{placeholder}\n{prompt}"
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    return {k: v.to(model.device) if hasattr(v, "to") else v for k, v in inputs.items()}


def _open_image(path: str | None, default_size: int = 336) -> Any:
    from PIL import Image

    if path is None:
        return Image.new("RGB", (default_size, default_size), (128, 128, 128))
    return Image.open(path).convert("RGB")


def _load_bench(args: argparse.Namespace) -> tuple[Any, dict]:
    """Load model and processor from ``args.model`` and build the inputs of one image + prompt."""
    model, processor = _load(args.model, args.device)
    return model, _prompt_inputs(model, processor, _open_image(args.image), args.prompt)


def _generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Answer one prompt about one image, optionally pruned, and optionally save the overlay."""
    from .api import apply, get_method

    check_paths(parser, args)
    params = dict(args.param)
    if args.method is not None:
        try:
            if args.budget is not None:
                params["budget"] = args.budget
            get_method(args.method, **params).num_keep(1)
        except (KeyError, ValueError) as error:
            parser.error(str(error).strip("'\""))
    elif args.budget is not None or params or args.viz or args.positions or args.compile:
        parser.error("--budget, --param, --positions, --compile and --viz need --method")
    if args.expected is not None and not args.viz:
        parser.error("--expected marks the answer in the --viz picture; add --viz PNG")
    try:
        model, processor = _load(args.model, args.device)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load --model {args.model!r}: {first_line(error)}")
    token = getattr(processor, "image_token", None)
    if token and token in args.prompt:
        parser.error(
            f"--prompt contains this model's image placeholder {token!r}; leave it out, the "
            "command places the image before the prompt itself"
        )
    image = _open_image(args.image)
    inputs = _prompt_inputs(model, processor, image, args.prompt)
    handle = None
    if args.method:
        try:
            handle = apply(
                model, args.method, positions=args.positions, compile=args.compile, **params
            )
        except (KeyError, ValueError) as error:  # e.g. a method this model's family cannot run
            parser.error(first_line(error))
    try:
        import torch

        from .compiled import SelectionNotCompilable

        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        selections = handle.selections if handle else []
    except SelectionNotCompilable as error:
        parser.error(first_line(error))
    finally:
        if handle is not None:
            handle.remove()
    answer = processor.batch_decode(
        output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )[0]
    print(answer.strip())
    if selections:
        print(f"[{args.method}] {_kept_summary(selections)}", file=sys.stderr)
    if args.viz:
        from .viz import kept_picture, model_view

        try:
            picture = kept_picture(
                model_view(processor, image),
                selections[0],
                question=args.prompt,
                method=args.method,
                answer=answer.strip(),
                expected=args.expected,
            )
        except ValueError as error:  # e.g. LLaVA-NeXT's tiles: no single grid to draw on
            print(f"no --viz picture: {first_line(error)}", file=sys.stderr)
            return 1
        picture.save(args.viz)
        print(f"kept-token picture written to {args.viz}", file=sys.stderr)
    return 0


def _kept_summary(selections: Sequence[Any]) -> str:
    """``kept K of N visual tokens``; for a merging method (VisionZip) the merged tokens too,
    as ``kept K + M merged = K+M of N``."""
    kept = sum(len(s.kept) for s in selections)
    total = sum(s.n for s in selections)
    merged = sum(len(s.merged_positions) for s in selections if s.merged_positions is not None)
    if merged:
        return f"kept {kept} + {merged} merged = {kept + merged} of {total} visual tokens"
    return f"kept {kept} of {total} visual tokens"


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


#: What the ``alignment`` row of ``bench`` measures (visprune.metrics.alignment_report).
ALIGNMENT_LEGEND = (
    "alignment: the kept visual tokens against all of them, as the language model receives "
    "them (mean over images): w2 = Bures-Wasserstein distance of Gaussians fitted to each "
    "(lower is closer), coverage = mean cosine distance from a dropped token to its nearest "
    "kept one (lower is better), relevance = share of the prompt-relevance mass kept (higher "
    "is better)."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command = args.command_parser
    if args.command == "methods":
        print(_methods_table())
        return 0
    from .compat import warn_if_untested

    warn_if_untested()  # now, before any progress bar starts
    if args.command == "bench":
        return _bench(command, args)
    if args.command == "generate":
        return _generate(command, args)
    if args.command == "sweep":
        from .sweep.command import main as sweep_main

        return sweep_main(command, args, _command_line(argv))
    return _demo(command, args, argv)


def _command_line(argv: Sequence[str] | None) -> str:
    """The command as typed, for the head of a results file."""
    return shlex.join(["visprune", *(sys.argv[1:] if argv is None else argv)])


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> int:
    if args.video:
        from .demo.video_run import run
    else:
        from .demo.run import run

    if args.model is not None:
        check_demo_checkpoint(parser, args.model, args.video)
    check_output_folder(parser, "--out", args.out)
    from .sweep.command import check_matplotlib

    check_matplotlib(parser)  # the demo draws the sweep's plots
    if not args.quick:
        print(f"visprune demo: {DEMO_TIMES}", file=sys.stderr)
    try:
        run(
            args.model,
            out=args.out,
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
