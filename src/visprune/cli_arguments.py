"""The options of ``visprune bench``, ``demo`` and ``generate``, their value types, and the help
formatter of every subcommand (``visprune sweep``'s options live in :mod:`visprune.sweep.command`).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` lists each option's default, except where there is none to show (None, False,
    an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def budget(text: str) -> int | float:
    """``--budget``: a positive finite count (``64``) or fraction (``0.25``)."""
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


def key_value(text: str) -> tuple[str, Any]:
    """``--param KEY=VALUE``: VALUE parsed as JSON, else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def at_least(minimum: int):
    """The type of an integer option that must be ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def model_arguments(command: argparse.ArgumentParser) -> None:
    """The model, method and device options shared by ``bench`` and ``generate``."""
    command.add_argument("--model", required=True, help="model directory or hub id")
    command.add_argument("--method", default=None, help="method name (default: unpruned)")
    command.add_argument("--budget", type=budget, default=None, help="count or fraction")
    command.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=key_value,
        help="method hyperparameter (repeatable); VALUE is parsed as JSON, else a string",
    )
    command.add_argument(
        "--positions",
        choices=("compact", "original"),
        default=None,
        help="position ids of the kept tokens (visprune.apply's option; default: the family's, "
        "compact for LLaVA, InternVL and Gemma 3, original for Qwen-VL; fastv, pdrop and dart "
        "always keep the original positions)",
    )
    command.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda if any)")


def bench_arguments(command: argparse.ArgumentParser) -> None:
    """The options of ``visprune bench``."""
    model_arguments(command)
    command.add_argument("--image", default=None, help="image file (default: a grey 336x336)")
    command.add_argument("--prompt", default="Describe this image.", help="the question")
    command.add_argument("--new-tokens", type=at_least(2), default=16, help="tokens to decode")
    command.add_argument("--repeats", type=at_least(1), default=5, help="timed rounds")
    command.add_argument("--warmup", type=at_least(0), default=1, help="untimed rounds first")
    command.add_argument("--json", action="store_true", help="print the result as JSON")
    command.add_argument(
        "--compile",
        action="store_true",
        help="run the method's selection as one torch.compile graph (visprune.apply's compile); "
        "the first warmup round compiles",
    )


#: Where ``visprune demo`` writes without ``--out``: the video demo in a folder of its own.
DEMO_OUT = "visprune-demo"
DEMO_VIDEO_OUT = "visprune-demo/video"


def demo_arguments(command: argparse.ArgumentParser) -> None:
    """The options of ``visprune demo``."""
    command.add_argument(
        "--video",
        action="store_true",
        help="the demo video model (LLaVA-NeXT-Video, 8-frame clips) instead of the image model",
    )
    command.add_argument(
        "--quick",
        action="store_true",
        help="one budget (11 %%) and fewer samples: 60 questions (with --video: 30 clips)",
    )
    command.add_argument(
        "--samples",
        type=at_least(1),
        default=None,
        help="test questions, or clips with --video (default: 500 questions, 150 clips; with "
        "--quick 60 questions, 30 clips)",
    )
    command.add_argument("--model", default=None, help="a demo checkpoint (default: bundled)")
    command.add_argument(
        "--out",
        default=None,
        help=f"folder for results and overlays; with --video {DEMO_VIDEO_OUT}, so that both "
        f"demos keep their results (default: {DEMO_OUT})",
    )
    command.add_argument(
        "--positions",
        choices=("compact", "original"),
        default="compact",
        help="position ids of the kept tokens (visprune.apply's option; fastv, pdrop and dart "
        "always keep the original positions)",
    )


def generate_arguments(command: argparse.ArgumentParser) -> None:
    """The options of ``visprune generate``."""
    model_arguments(command)
    command.add_argument("--image", required=True, help="image file")
    command.add_argument("--prompt", required=True, help="the question")
    command.add_argument(
        "--max-new-tokens", type=at_least(1), default=32, help="longest answer, in tokens"
    )
    command.add_argument(
        "--viz",
        default=None,
        metavar="PNG",
        help="save the kept-token picture: the view the model saw with the dropped tokens "
        "masked, the prompt, method, budget and answer",
    )
    command.add_argument(
        "--expected",
        default=None,
        metavar="ANSWER",
        help="the right answer: the --viz picture marks the model's answer right or wrong",
    )
    command.add_argument(
        "--compile",
        action="store_true",
        help="run the method's selection as one torch.compile graph (visprune.apply's compile)",
    )
