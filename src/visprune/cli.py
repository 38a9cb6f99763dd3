"""The ``visprune`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .registry import METHODS


def _methods_table() -> str:
    rows = [("name", "stage", "text", "parameters")]
    for name in METHODS.names():
        cls = METHODS[name]
        text = "required" if "text" in cls.requires else "optional" if cls.uses else "no"
        params = ", ".join(
            f"{field.name}={field.default!r}"
            for field in dataclasses.fields(cls)
            if field.name != "budget"
        )
        rows.append((name, cls.stage, text, params or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visprune", description="Training-free visual-token pruning for multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=f"visprune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("methods", help="list the selection methods and their parameters")
    bench = commands.add_parser(
        "bench",
        help="time a model unpruned or with a method: TTFT, decode, KV cache, FLOPs",
        description="Benchmark one image + prompt on a local (or cached) Hugging Face VLM.",
    )
    bench.add_argument("--model", required=True, help="model directory or hub id")
    bench.add_argument("--method", default=None, help="method name (default: unpruned)")
    bench.add_argument("--budget", type=_budget, default=None, help="count or fraction")
    bench.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_param,
        help="method hyperparameter (repeatable); VALUE is parsed as JSON, else a string",
    )
    bench.add_argument("--image", default=None, help="image file (default: a grey 336x336)")
    bench.add_argument("--prompt", default="Describe this image.")
    bench.add_argument("--new-tokens", type=_positive(2), default=16)
    bench.add_argument("--repeats", type=_positive(1), default=5)
    bench.add_argument("--warmup", type=_positive(0), default=1)
    bench.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda if any)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _budget(text: str) -> int | float:
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a number, got {text!r}") from None
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


def _load_bench(args: argparse.Namespace) -> tuple[Any, dict]:
    """Load model and processor from ``args.model`` and build the inputs of one image + prompt."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype="auto").eval()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    if args.image is None:
        image = Image.new("RGB", (336, 336), (128, 128, 128))
    else:
        image = Image.open(args.image).convert("RGB")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.prompt}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    return model, {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .bench import _resolve, format_table, measure

    looks_local = args.model.startswith((".", "~", os.sep)) or args.model.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(args.model)):
        parser.error(f"--model {args.model!r}: no such directory")
    if args.image is not None and not os.path.isfile(args.image):
        parser.error(f"--image {args.image!r}: no such file")
    params = dict(args.param)
    try:
        _resolve(args.method, args.budget, params)  # fail on a bad method/parameter before loading
    except (KeyError, ValueError) as error:
        parser.error(str(error).strip("'\""))
    try:
        model, inputs = _load_bench(args)
    except (OSError, ValueError) as error:
        print(f"visprune bench: cannot load {args.model!r}: {error}", file=sys.stderr)
        return 1
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
            **params,
        )
    except (KeyError, ValueError) as error:
        print(f"visprune bench: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "methods":
        print(_methods_table())
        return 0
    if args.command == "bench":
        return _bench(parser, args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
