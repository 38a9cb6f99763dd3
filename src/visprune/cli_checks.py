"""Checks of the command line's arguments, made before any model loads: each refusal is one
line with the command's usage, exit status 2 (``parser.error``)."""

from __future__ import annotations

import argparse
import json
import os


def first_line(error: BaseException) -> str:
    """An exception's message on one line (a KeyError's repr quotes stripped)."""
    text = str(error).strip("'\"").strip()
    return text.splitlines()[0] if text else type(error).__name__


#: Placeholders a prompt must not contain: the command puts the image in itself.
IMAGE_PLACEHOLDERS = ("<image>", "<|image_pad|>", "<|vision_start|>", "<video>")


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any model loads, every argument that would fail later."""
    from PIL import Image

    check_model(parser, args.model)
    if args.image is not None:
        if not os.path.isfile(args.image):
            parser.error(f"--image {args.image!r}: no such file")
        try:
            with Image.open(args.image) as image:
                image.convert("RGB")
        except OSError as error:  # PIL.UnidentifiedImageError is an OSError
            parser.error(f"--image {args.image!r} is not an image pillow can read ({error})")
    placeholder = next((p for p in IMAGE_PLACEHOLDERS if p in args.prompt), None)
    if placeholder is not None:
        parser.error(
            f"--prompt contains the image placeholder {placeholder!r}; leave it out, the "
            "command places the image before the prompt itself"
        )
    check_device(parser, args.device)
    viz = getattr(args, "viz", None)
    if viz:
        check_output_file(parser, "--viz", viz)


#: Seconds to wait for the Hugging Face Hub when ``--model`` is not a local folder.
HUB_TIMEOUT = 10.0


def check_model(parser: argparse.ArgumentParser, model: str) -> None:
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


def check_device(parser: argparse.ArgumentParser, device: str | None) -> None:
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


def check_output_file(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """``path`` is a picture file that can be written (its folder exists and is writable)."""
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


def check_output_folder(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """The folder exists (or can be made) and is writable, before any work runs."""
    if not path:
        # An empty path resolves to the current folder, which nobody asks for by typing ''.
        parser.error(f"{option} is empty; name a folder, or leave {option} out for the default")
    target = os.path.abspath(path)
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or (existing == target and not os.path.isdir(target)):
        parser.error(f"{option} {path!r}: {existing!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{option} {path!r}: {existing!r} is not writable")


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


def check_demo_checkpoint(parser: argparse.ArgumentParser, model: str, video: bool) -> None:
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
        parser.error(f"--model {model!r}: cannot read config.json ({first_line(error)})")
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
