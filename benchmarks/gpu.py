"""Selection and a pruned prefill on a GPU: LLaVA-1.5-7B's shapes in bf16, eager and compiled.

On a GPU the arithmetic of a selection is tiny and the cost is kernel launches and host syncs,
so this measures where they show. On a CUDA device, with a random-weight
``LlavaForConditionalGeneration`` of LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at 336 px: 576 visual
tokens; a Llama-2-7B language model: hidden 4096, 32 layers, MLP 11008) in bfloat16:

- **selection**: each method keeping 64 / 128 / 192 of the 576 tokens (width 4096, a 40-token
  prompt), eager, compiled (``compile=True``: one ``torch.compile(fullgraph=True)`` graph) and
  CUDA-graphed (``compile="reduce-overhead"``), with the ops each call dispatches and its host
  syncs (:mod:`visprune.dispatch`); compile times apart;
- **prefill**: one forward of the model over an image and its prompt (time to first token),
  unpruned and with each method applied (eager and compiled), and the host syncs that
  ``visprune.apply`` adds to a prefill of 1, 2 and 4 images.

Timings synchronise the device around every call (wall clock, what a caller waits) and also
read CUDA events (the device's own time). Without a CUDA device, or with ``--small``, the same
runs on small shapes on the CPU (a 2-layer, 128-wide language model and a 1-layer vision tower,
float32), and the results say so: that run proves the script works, not how fast a GPU is.

Usage::

    python benchmarks/gpu.py [--repeats 20] [--methods divprune otprune] \\
        [--compile-max-k 64] [--out benchmarks/results/gpu.md]
    python benchmarks/gpu.py --small        # CPU, small shapes (benchmarks/results/gpu-small.md)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import visprune  # noqa: E402
from _gpu_report import prefill_line, render, selection_line  # noqa: E402
from _gpu_setup import (  # noqa: E402
    BUDGETS,
    FULL,
    IMAGE_TOKENS,
    PROMPT_AFTER,
    SMALL,
    build_inputs,
    build_model,
)
from _timing import first_sentence, graph_break_site  # noqa: E402
from visprune.compiled import SelectionNotCompilable  # noqa: E402
from visprune.dispatch import DispatchCounts  # noqa: E402

METHODS = ["divprune", "otprune", "rediprune", "resprune", "trimtokenator", "cdpruner"]
SYNC_BATCHES = (1, 2, 4)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device: torch.device, repeats: int) -> dict:
    """Median wall time (device synchronised before and after each call) and, on CUDA, the
    median time between CUDA events recorded around the call; one untimed call first."""
    run()
    walls, events = [], []
    for _ in range(repeats):
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        began = time.perf_counter()
        run()
        if device.type == "cuda":
            end.record()
        synchronize(device)
        walls.append(1e3 * (time.perf_counter() - began))
        if device.type == "cuda":
            events.append(start.elapsed_time(end))
    return {
        "ms": statistics.median(walls),
        "event_ms": statistics.median(events) if events else None,
    }


def first_call(run, device: torch.device) -> float:
    """Seconds of one call (for a compiled call: the compile)."""
    synchronize(device)
    began = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - began


def modes(device: torch.device) -> list[tuple[str, bool | str]]:
    """(label, ``compile``) of the selection variants: CUDA graphs exist only on CUDA."""
    variants = [("eager", False), ("compiled", True)]
    if device.type == "cuda":
        variants.append(("CUDA graph", "reduce-overhead"))
    return variants


def graphed(run):
    """A call that first tells torch a new step begins: CUDA-graph replays reuse their output
    memory, and each call here discards the previous call's output."""

    def call():
        torch.compiler.cudagraph_mark_step_begin()
        return run()

    return call


def selection_rows(
    methods: list[str], width: int, device: torch.device, repeats: int, compile_max_k: int
) -> list[dict]:
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randn(IMAGE_TOKENS, width, generator=generator).to(device, torch.bfloat16)
    text = torch.randn(PROMPT_AFTER, width, generator=generator).to(device, torch.bfloat16)
    rows = []
    for method in methods:
        for k in BUDGETS:
            row = {"method": method, "k": k}

            def call(compile=False, k=k, method=method):
                return visprune.select(method, tokens, k, text=text, compile=compile)

            with DispatchCounts() as counts:
                eager = call()
            row.update(ops=counts.ops, syncs=counts.syncs)
            for label, compile in modes(device):
                if compile and k > compile_max_k:
                    row[label] = {"note": f"budget above {compile_max_k}"}
                    continue
                run = (
                    (lambda c=compile: call(c))
                    if label != "CUDA graph"
                    else graphed(lambda c=compile: call(c))
                )
                try:
                    seconds = first_call(run, device)
                except SelectionNotCompilable as error:
                    row[label] = {"note": "does not compile: " + _reason(error)}
                    continue
                result = timed(run, device, repeats)
                result["compile_s"] = seconds if compile else None
                result["same"] = torch.equal(run(), eager)
                row[label] = result
            rows.append(row)
            print(selection_line(row), flush=True)
    return rows


def _reason(error: Exception) -> str:
    """Where the graph breaks (``file:line in function``), from the error's message."""
    return graph_break_site(error) or first_sentence(error)


def prefill_rows(
    model, methods: list[str], device: torch.device, repeats: int, compile_max_k: int
) -> list[dict]:
    inputs = build_inputs(1, model.dtype, device)

    def forward():
        with torch.no_grad():
            model(**inputs)

    rows = [{"method": "unpruned", "k": IMAGE_TOKENS, "eager": timed(forward, device, repeats)}]
    print(prefill_line(rows[0]), flush=True)
    for method in methods:
        for k in BUDGETS:
            row = {"method": method, "k": k}
            for label, compile in modes(device)[:2]:
                if compile and k > compile_max_k:
                    row[label] = {"note": f"budget above {compile_max_k}"}
                    continue
                with visprune.apply(model, method, budget=k, compile=compile):
                    try:
                        seconds = first_call(forward, device)
                    except SelectionNotCompilable as error:
                        row[label] = {"note": "does not compile: " + _reason(error)}
                        continue
                    row[label] = timed(forward, device, repeats)
                    row[label]["compile_s"] = seconds if compile else None
            rows.append(row)
            print(prefill_line(row), flush=True)
    return rows


def added_syncs(model, method: str, device: torch.device) -> dict[int, tuple[int, int]]:
    """Per batch size: host syncs of an unpruned and of a pruned prefill (one image a row)."""
    counts = {}
    for batch in SYNC_BATCHES:
        inputs = build_inputs(batch, model.dtype, device)
        with torch.no_grad():
            with DispatchCounts() as unpruned:
                model(**inputs)
            with visprune.apply(model, method, budget=BUDGETS[0]), DispatchCounts() as pruned:
                model(**inputs)
        counts[batch] = (unpruned.syncs, pruned.syncs)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small shapes on the CPU")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=visprune.list_methods())
    parser.add_argument(
        "--compile-max-k",
        type=int,
        default=64,
        help="compile only budgets up to this (compile time grows with the budget)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.small
    if not cuda and not args.small:
        print("no CUDA device: small shapes on the CPU (as with --small)", file=sys.stderr)
    shapes, device = (FULL, torch.device("cuda")) if cuda else (SMALL, torch.device("cpu"))
    out = args.out or Path("benchmarks/results") / ("gpu.md" if cuda else "gpu-small.md")
    selection = selection_rows(
        args.methods, shapes.text["hidden_size"], device, args.repeats, args.compile_max_k
    )
    model = build_model(shapes, device)
    prefill = prefill_rows(model, args.methods, device, args.repeats, args.compile_max_k)
    syncs = added_syncs(model, args.methods[0], device)
    given = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(["benchmarks/gpu.py", *given])
    text = render(
        command,
        shapes,
        device,
        args.repeats,
        args.compile_max_k,
        selection,
        prefill,
        syncs,
        args.methods[0],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
