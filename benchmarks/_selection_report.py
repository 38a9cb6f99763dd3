"""The Markdown report of ``selection.py``: how it was measured, then one table of eager speed
and dispatch counts and, where compiled calls were timed, one of eager against compiled."""

from __future__ import annotations

import os

from _selection_cases import HEADS, KEY_WIDTH
from visprune.bench import machine_description


def render(rows: list[dict], command: str, repeats: int, compile_max_k: int | None) -> str:
    """The whole report: the method, the speed table and the compiled table (if any)."""
    lines = _method(command, repeats) + _speed_table(rows)
    compiled = [row for row in rows if "compiled" in row]
    if compiled:
        lines += _compiled_table(compiled, repeats, compile_max_k)
    return "\n".join(lines) + "\n"


def _method(command: str, repeats: int) -> list[str]:
    """The command, the machine and how each column is measured."""
    return [
        "# Selection speed",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_description()}",
        "",
        f"Load average at the end of the run: {os.getloadavg()[0]:.1f} (1 minute) on "
        f"{os.cpu_count()} CPUs; above the threads used, other processes shared the CPUs and "
        "the timings (not the counts) are noisy.",
        "",
        f"Medians of {repeats} repeats; the Gram time is one `X @ X.T` (a batched `X @ X.mT` for "
        "video) on the same float32 tokens, timed alternately with the method in the same "
        "process. Ratio = method median / Gram median. Spread = max - min of the method's "
        "repeats. Video: `loop` runs the same method frame by frame in Python (the published "
        "codes' way); `same` says whether both select identical tokens. VisPruner and VisionZip "
        f"get a seeded {HEADS}-head CLS attention (and VisionZip {KEY_WIDTH}-wide keys and a CLS "
        "state), VisionZip runs `reduce` (kept plus merged = budget). In-LLM rows (FastV, "
        "PyramidDrop, DART): the recomputed scores (FastV and PyramidDrop: the last prompt "
        "token's attention row; DART: key norms) plus the selection, on one random-weight "
        "LLaVA-1.5-7B-sized Llama layer; `layer` = that share of one forward of the same layer "
        "on the whole 616-token sequence (a 32-layer model's prefill is about 32 such "
        "forwards).",
        "",
        "VisPruner is outside the 1.5x target by design: each of its duplicate-removal rounds "
        "multiplies its own `a @ b.T` as the published code does (about five Grams of "
        "multiply-adds at n = 576, k = 64, in 64 smaller products), because the float32 "
        "rounding of those per-round products decides near-ties that the parity vectors hold; "
        "one shared Gram read by every round would be cheaper but rounds differently.",
        "",
        "Counted in the same run with `visprune.dispatch.DispatchCounts` (exact, the same on any "
        "device): `ops` = ops one call dispatches (each a kernel launch on a GPU; in-LLM rows "
        "include the layer's score recomputation), `ops/pick` = the marginal ops of one more "
        "greedy pick (the count at the budget minus the count at half of it, per pick), "
        "`syncs` = host syncs per call (each stalls a GPU stream until it drains).",
        "",
    ]


def _speed_table(rows: list[dict]) -> list[str]:
    """One row per case and method: eager time, the Gram, the per-frame loop, the layer share
    and the dispatch counts."""
    lines = [
        "| case | method | time (ms) | spread (ms) | Gram (ms) | ratio to Gram | "
        "per-frame loop (ms) | same | share of one layer | ops | ops/pick | syncs |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        loop = f"{row['loop_ms']:.1f}" if "loop_ms" in row else ""
        share = f"{100 * row['ms'] / row['layer_ms']:.1f} %" if "layer_ms" in row else ""
        same = ("yes" if row["identical"] else "NO") if "identical" in row else ""
        lines.append(
            f"| {row['case']} | {row['method']} | {row['ms']:.1f} | {row['spread']:.1f} | "
            f"{row['gram_ms']:.1f} | {row['ratio']:.2f}x | {loop} | {same} | {share} | "
            f"{row['ops']} | {row['ops_per_pick']:.1f} | {row['syncs']} |"
        )
    return lines


def _compiled_table(compiled: list[dict], repeats: int, compile_max_k: int | None) -> list[str]:
    """Compile time and eager against compiled calls, for the rows that tried to compile."""
    lines = [
        "",
        "## Eager and compiled",
        "",
        "`compile=True`: the method's selection core as one `torch.compile(fullgraph=True, "
        "dynamic=False)` graph (Inductor, CPU code). `compile` = the first call, which "
        "compiles (once per method, shapes and budget; Inductor's graph caches off, but the "
        "C++ kernels it builds may come from its on-disk cache of earlier runs, so a "
        "first-ever compile takes longer); eager and compiled calls are then "
        f"timed alternately ({repeats} repeats each, medians). `compiles` says whether the "
        "core runs as one graph (and picks what eager picks), or why not. Cases with a budget "
        f"above {compile_max_k} are left out: the greedy loop is unrolled into the graph, so "
        "compile time grows with the budget.",
        "",
        "| case | method | compiles | compile (s) | eager (ms) | compiled (ms) | "
        "eager / compiled |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in compiled:
        if "compiled_ms" in row:
            timing = (
                f"{row['compile_s']:.1f} | {row['eager_alt_ms']:.1f} | "
                f"{row['compiled_ms']:.1f} | {row['eager_alt_ms'] / row['compiled_ms']:.2f}x"
            )
        else:
            timing = " |  |  | "
        lines.append(f"| {row['case']} | {row['method']} | {row['compiled']} | {timing} |")
    return lines
