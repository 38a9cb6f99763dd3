"""The Markdown report of ``gpu.py`` and its progress lines: how it was measured, then the
selection, prefill and host-sync tables."""

from __future__ import annotations

import torch

from _gpu_setup import BUDGETS, IMAGE_TOKENS, PROMPT_AFTER, PROMPT_BEFORE, SMALL, Shapes
from visprune.bench import machine_description


def _ms(result: dict | None) -> str:
    """A timing cell: the wall ms (CUDA-event ms in brackets), or why there is none."""
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
    """A compile-time cell in seconds, empty for an eager call or one not timed."""
    if not result or result.get("compile_s") is None:
        return ""
    return f"{result['compile_s']:.1f}"


def selection_line(row: dict) -> str:
    """The progress line of one selection row."""
    parts = [f"{label} {_ms(row.get(label))}" for label in ("eager", "compiled", "CUDA graph")]
    return f"select  {row['method']:<14} k={row['k']:<4} " + " | ".join(parts)


def prefill_line(row: dict) -> str:
    """The progress line of one prefill row."""
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
    """The whole report: how it was measured, then the selection, prefill and sync tables."""
    lines = _method(command, shapes, device, repeats, compile_max_k)
    lines += _selection_table(selection, shapes)
    lines += _prefill_table(prefill)
    lines += _sync_table(syncs, sync_method)
    return "\n".join(lines) + "\n"


def _method(
    command: str, shapes: Shapes, device: torch.device, repeats: int, compile_max_k: int
) -> list[str]:
    """The command, the machine, the model and how each time is taken."""
    small = shapes is SMALL
    where = (
        f"**No CUDA device or `--small`: small shapes on the CPU** ({shapes.name}); these rows "
        "show that the script runs, not how fast a GPU is."
        if small
        else f"Model: random-weight {shapes.name}, SDPA attention, on {device}."
    )
    event = " (in brackets: CUDA events, the device's own time)" if device.type == "cuda" else ""
    return [
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
    ]


def _selection_table(selection: list[dict], shapes: Shapes) -> list[str]:
    """Eager, compiled and CUDA-graphed selection per method and budget, with its counts."""
    lines = [
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
    return lines


def _prefill_table(prefill: list[dict]) -> list[str]:
    """Prefill time per method and budget, and its speed-up over the unpruned first row."""
    unpruned = prefill[0]["eager"]["ms"]
    lines = [
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
    return lines


def _sync_table(syncs: dict[int, tuple[int, int]], sync_method: str) -> list[str]:
    """Host syncs of an unpruned and a pruned prefill per batch size."""
    lines = [
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
    return lines
