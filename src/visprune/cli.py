"""The ``visprune`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
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


def _needs(cls: type) -> str:
    """What ``cls`` reads besides the visual tokens: its ``requires`` (needed) and the rest of
    its ``uses`` (read when given), e.g. ``prompt text; optional: text query``."""
    needed = [NEEDS.get(name, name) for name in sorted(cls.requires)]
    optional = [NEEDS.get(name, name) for name in sorted(cls.uses - cls.requires)]
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
    generate.add_argument("--viz", default=None, metavar="PNG", help="save the kept-token overlay")
    return parser


#: ``visprune demo``'s running times, measured on an idle 2-core CPU (as in the README).
DEMO_TIMES = (
    "On an idle 2-core CPU the image and the video demo take about 3 minutes together (make "
    "demo); --quick takes about 40 s."
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


#: Placeholders a prompt must not contain: the command puts the image in itself.
IMAGE_PLACEHOLDERS = ("<image>", "<|image_pad|>", "<|vision_start|>", "<video>")


def _check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any model loads, every argument that would fail later."""
    _check_model(parser, args.model)
    if args.image is not None:
        if not os.path.isfile(args.image):
            parser.error(f"--image {args.image!r}: no such file")
        try:
            _open_image(args.image)
        except OSError as error:  # PIL.UnidentifiedImageError is an OSError
            parser.error(f"--image {args.image!r} is not an image pillow can read ({error})")
    placeholder = next((p for p in IMAGE_PLACEHOLDERS if p in args.prompt), None)
    if placeholder is not None:
        parser.error(
            f"--prompt contains the image placeholder {placeholder!r}; leave it out, the "
            "command places the image before the prompt itself"
        )
    _check_device(parser, args.device)
    viz = getattr(args, "viz", None)
    if viz:
        _check_output_file(parser, "--viz", viz)


#: Seconds to wait for the Hugging Face Hub when ``--model`` is not a local folder.
HUB_TIMEOUT = 10.0


def _check_model(parser: argparse.ArgumentParser, model: str) -> None:
    """``--model`` is a local folder, a hub id in the local cache, or a hub id the Hub knows.

    Anything else fails at once, before transformers would retry an unreachable Hub for
    minutes: a path-like argument (a path separator, a leading ``.`` or ``~``, or not a valid
    hub id) that is no folder, and a hub id neither cached nor reachable.
    """
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isdir(os.path.expanduser(model)):
        return
    try:
        validate_repo_id(model)
        hub_id = not model.startswith((".", "~", os.sep)) and model.count("/") <= 1
    except HFValidationError:
        hub_id = False
    if not hub_id:
        parser.error(f"--model {model!r}: no such directory")
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    }
    if offline:
        parser.error(
            f"--model {model!r}: no such directory, and no such model in the Hugging Face cache "
            "(HF_HUB_OFFLINE is set, so it cannot be downloaded)"
        )
    try:
        model_info(model, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        return  # it exists; loading says how to get access
    except RepositoryNotFoundError:
        parser.error(
            f"--model {model!r}: no such directory, and no such model on the Hugging Face Hub (a "
            "private one needs `hf auth login`)"
        )
    except Exception as error:  # no connection, a timeout, a proxy: the Hub is out of reach
        parser.error(
            f"--model {model!r}: no such directory, it is not in the Hugging Face cache, and the "
            f"Hub cannot be reached to download it ({type(error).__name__})"
        )


def _check_device(parser: argparse.ArgumentParser, device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        parser.error(f"--device {device!r}: {error}")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device!r}: this PyTorch build has no usable CUDA device")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        parser.error(f"--device {device!r}: MPS is not available here")


def _check_output_file(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"{option} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        parser.error(f"{option} {path!r}: the folder {folder!r} is not writable")
    extension = os.path.splitext(path)[1].lower()
    if extension not in Image.registered_extensions():
        parser.error(
            f"{option} {path!r}: unknown picture extension {extension or '(none)'!r}; use .png"
        )


def _check_output_folder(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """The folder exists (or can be made) and is writable, before any work runs."""
    target = os.path.abspath(path)
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or (existing == target and not os.path.isdir(target)):
        parser.error(f"{option} {path!r}: {existing!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{option} {path!r}: {existing!r} is not writable")


def _generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Answer one prompt about one image, optionally pruned, and optionally save the overlay."""
    from .api import apply, get_method

    _check_paths(parser, args)
    params = dict(args.param)
    if args.method is not None:
        try:
            if args.budget is not None:
                params["budget"] = args.budget
            get_method(args.method, **params).num_keep(1)
        except (KeyError, ValueError) as error:
            parser.error(str(error).strip("'\""))
    elif args.budget is not None or params or args.viz or args.positions:
        parser.error("--budget, --param, --positions and --viz need --method")
    try:
        model, processor = _load(args.model, args.device)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load --model {args.model!r}: {_first_line(error)}")
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
            handle = apply(model, args.method, positions=args.positions, **params)
        except (KeyError, ValueError) as error:  # e.g. a method this model's family cannot run
            parser.error(_first_line(error))
    try:
        import torch

        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        selections = handle.selections if handle else []
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
        from .viz import overlay

        seen = _readable(_model_view(processor, image))
        overlay(seen, selections[0]).save(args.viz)
        print(f"overlay written to {args.viz}", file=sys.stderr)
    return 0


#: Shorter side of a kept-token picture at least (a 64 x 64 view is too small to read) and
#: longer side at most (a 6000 x 4000 photo of a model without a crop would be unwieldy).
VIEW_MIN, VIEW_MAX = 384, 1024


def _size_entry(size: Any, key: str) -> int | None:
    """``size[key]`` of an image processor's size, a dict or (transformers 5) a ``SizeDict``."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _kept_summary(selections: Sequence[Any]) -> str:
    """``kept K of N visual tokens``; for a merging method (VisionZip) the merged tokens too,
    as ``kept K + M merged = K+M of N``."""
    kept = sum(len(s.kept) for s in selections)
    total = sum(s.n for s in selections)
    merged = sum(len(s.merged_positions) for s in selections if s.merged_positions is not None)
    if merged:
        return f"kept {kept} + {merged} merged = {kept + merged} of {total} visual tokens"
    return f"kept {kept} of {total} visual tokens"


def _first_line(error: BaseException) -> str:
    """An exception's message on one line (a KeyError's repr quotes stripped)."""
    text = str(error).strip("'\"").strip()
    return text.splitlines()[0] if text else type(error).__name__


def _model_view(processor: Any, image: Any) -> Any:
    """The image as the model sees it: resized and centre-cropped like its image processor
    (LLaVA's CLIP processor: shortest edge to ``size``, then a ``crop_size`` centre crop).
    A processor without such sizes (Qwen-VL's dynamic resolution) sees the whole image."""
    from PIL import Image

    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    short = _size_entry(size, "shortest_edge")
    height, width = _size_entry(size, "height"), _size_entry(size, "width")
    if getattr(image_processor, "do_resize", True):
        if short:
            scale = short / min(image.size)
            image = image.resize(
                (max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                Image.BICUBIC,
            )
        elif height and width:
            image = image.resize((width, height), Image.BICUBIC)
    crop = getattr(image_processor, "crop_size", None)
    crop_height, crop_width = _size_entry(crop, "height"), _size_entry(crop, "width")
    if getattr(image_processor, "do_center_crop", False) and crop_height and crop_width:
        left, top = (image.width - crop_width) // 2, (image.height - crop_height) // 2
        image = image.crop((left, top, left + crop_width, top + crop_height))
    return image


def _readable(view: Any) -> Any:
    """``view`` scaled for looking at: small views enlarged by a whole factor (sharp pixels)
    until the shorter side reaches :data:`VIEW_MIN`, large ones reduced to :data:`VIEW_MAX`."""
    from PIL import Image

    if max(view.size) > VIEW_MAX:
        scale = VIEW_MAX / max(view.size)
        size = (max(1, round(view.width * scale)), max(1, round(view.height * scale)))
        return view.resize(size, Image.LANCZOS)
    factor = min(-(-VIEW_MIN // min(view.size)), VIEW_MAX // max(view.size))
    if factor > 1:
        return view.resize((view.width * factor, view.height * factor), Image.NEAREST)
    return view


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .bench import _resolve, format_table, measure

    _check_paths(parser, args)
    params = dict(args.param)
    try:
        _resolve(args.method, args.budget, params)  # fail on a bad method/parameter before loading
    except (KeyError, ValueError) as error:
        parser.error(str(error).strip("'\""))
    try:
        model, inputs = _load_bench(args)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load --model {args.model!r}: {_first_line(error)}")
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
            **params,
        )
    except (KeyError, ValueError) as error:
        parser.error(_first_line(error))
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
    return _demo(command, args, argv)


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> int:
    if args.video:
        from .demo.video_run import run
    else:
        from .demo.run import run

    if args.model is not None:
        _check_demo_checkpoint(parser, args.model, args.video)
    _check_output_folder(parser, "--out", args.out)
    if not args.quick:
        print(f"visprune demo: {DEMO_TIMES}", file=sys.stderr)
    try:
        run(
            args.model,
            out=args.out,
            quick=args.quick,
            samples=args.samples,
            positions=args.positions,
            command=shlex.join(["visprune", *(sys.argv[1:] if argv is None else argv)]),
        )
    except FileNotFoundError as error:
        print(f"visprune demo: {error}", file=sys.stderr)
        return 1
    return 0


#: The model type of each demo checkpoint kind, and the option that selects it.
DEMO_KINDS = {
    False: ("llava", "visprune demo"),
    True: ("llava_next_video", "visprune demo --video"),
}
#: File names transformers loads weights from.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _check_demo_checkpoint(parser: argparse.ArgumentParser, model: str, video: bool) -> None:
    """``--model`` of ``demo`` is a demo checkpoint of the kind asked for, with its weights."""
    folder = os.path.expanduser(model)
    if not os.path.isdir(folder):
        parser.error(f"--model {model!r}: no such directory")
    config = os.path.join(folder, "config.json")
    try:
        with open(config) as file:
            model_type = json.load(file).get("model_type")
    except FileNotFoundError:
        parser.error(f"--model {model!r} has no config.json: it is not a checkpoint folder")
    except (OSError, ValueError, AttributeError) as error:
        parser.error(f"--model {model!r}: cannot read config.json ({_first_line(error)})")
    wanted, command = DEMO_KINDS[video]
    if model_type != wanted:
        other = next((cmd for kind, cmd in DEMO_KINDS.values() if kind == model_type), None)
        hint = (
            f"run `{other} --model {model}`"
            if other
            else "visprune demo evaluates demo checkpoints (scripts/train_demo_model.py); for "
            "other models use `visprune generate` or `visprune bench`"
        )
        parser.error(
            f"--model {model!r} holds a {model_type} model, not the {wanted} demo model that "
            f"`{command}` evaluates; {hint}"
        )
    if not any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_FILES):
        parser.error(
            f"--model {model!r} has no weights (none of {', '.join(WEIGHT_FILES)}); point it at "
            "a folder written by the demo's training script"
        )


if __name__ == "__main__":
    raise SystemExit(main())
