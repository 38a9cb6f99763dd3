"""``visprune generate``: answer a prompt about an image with a Hugging Face VLM, pruned or not,
and optionally save the kept-token picture."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch

from . import api
from .cli_checks import check_paths, first_line
from .cli_model import load, open_image, prompt_inputs
from .compiled import SelectionNotCompilable


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Answer one prompt about one image, optionally pruned, and optionally save the overlay."""
    params = _checked_params(parser, args)
    try:
        model, processor = load(args.model, args.device)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load --model {args.model!r}: {first_line(error)}")
    token = getattr(processor, "image_token", None)
    if token and token in args.prompt:
        parser.error(
            f"--prompt contains this model's image placeholder {token!r}; leave it out, the "
            "command places the image before the prompt itself"
        )
    image = open_image(args.image)
    inputs = prompt_inputs(model, processor, image, args.prompt)
    handle = None
    if args.method:
        try:
            handle = api.apply(
                model, args.method, positions=args.positions, compile=args.compile, **params
            )
        except (KeyError, ValueError) as error:  # e.g. a method this model's family cannot run
            parser.error(first_line(error))
    try:
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
        print(f"[{args.method}] {kept_summary(selections)}", file=sys.stderr)
    if args.viz:
        return _save_picture(args, processor, image, selections, answer.strip())
    return 0


def _checked_params(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The method's parameters (``--param``, ``--budget``), refused before any model loads when
    the method, its parameters or the options that need a method do not fit."""
    check_paths(parser, args)
    params = dict(args.param)
    if args.method is not None:
        try:
            if args.budget is not None:
                params["budget"] = args.budget
            api.get_method(args.method, **params).num_keep(1)
        except (KeyError, ValueError) as error:
            parser.error(str(error).strip("'\""))
    elif args.budget is not None or params or args.viz or args.positions or args.compile:
        parser.error("--budget, --param, --positions, --compile and --viz need --method")
    if args.expected is not None and not args.viz:
        parser.error("--expected marks the answer in the --viz picture; add --viz PNG")
    return params


def _save_picture(
    args: argparse.Namespace, processor: Any, image: Any, selections: Sequence[Any], answer: str
) -> int:
    """Write the ``--viz`` kept-token picture; exit status 1 (and why) when there is none to
    draw."""
    from .viz import kept_picture, model_view

    try:
        picture = kept_picture(
            model_view(processor, image),
            selections[0],
            question=args.prompt,
            method=args.method,
            answer=answer,
            expected=args.expected,
        )
    except ValueError as error:  # e.g. LLaVA-NeXT's tiles: no single grid to draw on
        print(f"no --viz picture: {first_line(error)}", file=sys.stderr)
        return 1
    picture.save(args.viz)
    print(f"kept-token picture written to {args.viz}", file=sys.stderr)
    return 0


def kept_summary(selections: Sequence[Any]) -> str:
    """``kept K of N visual tokens``; for a merging method (VisionZip) the merged tokens too,
    as ``kept K + M merged = K+M of N``."""
    kept = sum(len(s.kept) for s in selections)
    total = sum(s.n for s in selections)
    merged = sum(len(s.merged_positions) for s in selections if s.merged_positions is not None)
    if merged:
        return f"kept {kept} + {merged} merged = {kept + merged} of {total} visual tokens"
    return f"kept {kept} of {total} visual tokens"
