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
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

import visprune
from visprune.bench import machine_description
from visprune.compiled import SelectionNotCompilable
from visprune.dispatch import DispatchCounts

METHODS = ["divprune", "otprune", "rediprune", "resprune", "trimtokenator", "cdpruner"]
BUDGETS = (64, 128, 192)
IMAGE_TOKENS = 576
IMAGE_TOKEN = 32000
PROMPT_BEFORE, PROMPT_AFTER = 5, 35
SYNC_BATCHES = (1, 2, 4)


@dataclass(frozen=True)
class Shapes:
    """The model's shapes: LLaVA-1.5-7B's (``full``) or small ones for a CPU."""

    name: str
    vision: dict
    text: dict
    dtype: torch.dtype


FULL = Shapes(
    name="LLaVA-1.5-7B (CLIP ViT-L/14-336, Llama-2-7B), bfloat16",
    vision={
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
    },
    text={
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    dtype=torch.bfloat16,
)

SMALL = Shapes(
    name="small (vision: 1 layer, width 64; language model: 2 layers, width 128), float32",
    vision={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
    },
    text={
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    dtype=torch.float32,
)


def build_model(shapes: Shapes, device: torch.device) -> LlavaForConditionalGeneration:
    """A random-weight LLaVA-1.5 of ``shapes`` on ``device``: 24 x 24 patches at 336 px."""
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "image_size": 336,
            "patch_size": 14,
            **shapes.vision,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
            **shapes.text,
        },
        image_token_index=IMAGE_TOKEN,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-2,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=shapes.dtype)
    return model.eval()


def build_inputs(batch: int, dtype: torch.dtype, device: torch.device) -> dict:
    """``batch`` prompts of one image each: 5 prompt tokens, the image, 35 prompt tokens."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(batch):
        text = torch.randint(1, 31000, (PROMPT_BEFORE + PROMPT_AFTER,), generator=generator)
        image = torch.full((IMAGE_TOKENS,), IMAGE_TOKEN)
        rows.append(torch.cat([text[:PROMPT_BEFORE], image, text[PROMPT_BEFORE:]]))
    ids = torch.stack(rows)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch, 3, 336, 336, generator=generator).to(device, dtype),
    }


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
            print(_selection_line(row), flush=True)
    return rows


def _reason(error: Exception) -> str:
    """Where the graph breaks (``file:line in function``), from the error's message."""
    message = str(error)
    if " At " in message:
        return message.split(" At ", 1)[1].split(": `", 1)[0]
    return message.split(": ", 1)[-1].split(". ")[0]


def prefill_rows(
    model, methods: list[str], device: torch.device, repeats: int, compile_max_k: int
) -> list[dict]:
    inputs = build_inputs(1, model.dtype, device)

    def forward():
        with torch.no_grad():
            model(**inputs)

    rows = [{"method": "unpruned", "k": IMAGE_TOKENS, "eager": timed(forward, device, repeats)}]
    print(_prefill_line(rows[0]), flush=True)
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
            print(_prefill_line(row), flush=True)
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


def _ms(result: dict | None) -> str:
    if result is None:
        return ""
    if "note" in result:
        return result["note"]
    shown = f"{result['ms']:.2f}"
    if result.get("event_ms") is not None:
        shown += f" ({result['event_ms']:.2f})"
    if result.get("same") is False:
        shown += " DIFFERENT PICKS"
    return shown


def _compile_s(result: dict | None) -> str:
    if not result or result.get("compile_s") is None:
        return ""
    return f"{result['compile_s']:.1f}"


def _selection_line(row: dict) -> str:
    parts = [f"{label} {_ms(row.get(label))}" for label in ("eager", "compiled", "CUDA graph")]
    return f"select  {row['method']:<14} k={row['k']:<4} " + " | ".join(parts)


def _prefill_line(row: dict) -> str:
    parts = [f"{label} {_ms(row.get(label))}" for label in ("eager", "compiled")]
    return f"prefill {row['method']:<14} k={row['k']:<4} " + " | ".join(parts)


def render(
    command: str,
    shapes: Shapes,
    device: torch.device,
    repeats: int,
    compile_max_k: int,
    selection: list[dict],
    prefill: list[dict],
    syncs: dict[int, tuple[int, int]],
    sync_method: str,
) -> str:
    small = shapes is SMALL
    where = (
        f"**No CUDA device or `--small`: small shapes on the CPU** ({shapes.name}); these rows "
        "show that the script runs, not how fast a GPU is."
        if small
        else f"Model: random-weight {shapes.name}, SDPA attention, on {device}."
    )
    event = " (in brackets: CUDA events, the device's own time)" if device.type == "cuda" else ""
    lines = [
        "# Selection and prefill on a GPU" + (" (small shapes, CPU)" if small else ""),
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_description()}",
        "",
        where,
        "",
        f"Medians of {repeats} calls after one untimed call, in ms of wall time with the device "
        f"synchronised before and after each call{event}. Compiled: `compile=True` (one "
        "`torch.compile(fullgraph=True, dynamic=False)` graph per method and shapes); CUDA "
        '(on CUDA only): `compile="reduce-overhead"`, the compiled graph captured as a CUDA '
        "graph. `compile (s)` = the first call, which compiles. Budgets above "
        f"{compile_max_k} are not compiled (`--compile-max-k`: the greedy loop is unrolled "
        "into the graph, so compile time grows with the budget).",
        "",
        "## Selection",
        "",
        f"{IMAGE_TOKENS} tokens of width {shapes.text['hidden_size']} in bfloat16 (the methods "
        f"select in float32) and a {PROMPT_AFTER}-token prompt; `ops` and `syncs` = ops one "
        "eager call dispatches (each a kernel launch on a GPU) and its host syncs "
        "(`visprune.dispatch`).",
        "",
        "| method | keep | eager (ms) | compiled (ms) | compile (s) | CUDA graph (ms) | "
        "compile (s) | ops | syncs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in selection:
        graph = row.get("CUDA graph")
        lines.append(
            f"| {row['method']} | {row['k']} of {IMAGE_TOKENS} | {_ms(row['eager'])} | "
            f"{_ms(row['compiled'])} | {_compile_s(row['compiled'])} | "
            f"{_ms(graph) if graph else 'CUDA only'} | {_compile_s(graph)} | {row['ops']} | "
            f"{row['syncs']} |"
        )
    unpruned = prefill[0]["eager"]["ms"]
    lines += [
        "",
        "## Prefill",
        "",
        f"One forward (`model(**inputs)`, with the KV cache) over {PROMPT_BEFORE} prompt "
        f"tokens, the image's {IMAGE_TOKENS} tokens and {PROMPT_AFTER} more (vision tower "
        "included), batch 1; speed-up = unpruned / pruned wall time.",
        "",
        "| method | keep | eager (ms) | speed-up | compiled (ms) | speed-up | compile (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in prefill:
        cells = []
        for label in ("eager", "compiled"):
            result = row.get(label)
            speedup = f"{unpruned / result['ms']:.2f}x" if result and "ms" in result else ""
            cells += [_ms(result), speedup]
        lines.append(
            f"| {row['method']} | {row['k']} of {IMAGE_TOKENS} | {' | '.join(cells)} | "
            f"{_compile_s(row.get('compiled'))} |"
        )
    lines += [
        "",
        "## Host syncs per prefill",
        "",
        f"Host syncs of one forward, unpruned and with `visprune.apply(model, {sync_method!r}, "
        f"budget={BUDGETS[0]})`, one image per row (`visprune.dispatch`, exact): what visprune "
        "adds does not grow with the images in the batch.",
        "",
        "| images in the batch | unpruned | pruned | added by visprune |",
        "|---:|---:|---:|---:|",
    ]
    for batch, (before, after) in syncs.items():
        lines.append(f"| {batch} | {before} | {after} | {after - before} |")
    return "\n".join(lines) + "\n"


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
