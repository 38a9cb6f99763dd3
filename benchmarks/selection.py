"""Selection speed of every method, as a ratio to one ``X @ X.T`` on the same tokens.

Each repeat times the Gram product and the method back to back in the same process, so machine
noise hits both; the table reports medians and the ratio of medians. The video case also runs
the per-frame Python loop that the published code uses and checks it selects the same tokens.

The methods that prune inside the language model (FastV, PyramidDrop, DART) select from scores
that they recompute from one decoder layer's own modules (the last prompt token's attention
row, or every token's key norm); their rows time that recomputation plus the selection on one
LLaVA-1.5-7B-sized Llama layer (hidden 4096, 32 heads, MLP 11008) over the image's 576 tokens
and a 40-token prompt, against the same Gram and against one forward of that layer.

Every row also counts, in the same run, what a call costs a GPU apart from arithmetic
(:mod:`visprune.dispatch`): the ops it dispatches (each a kernel launch there), the marginal ops
per greedy pick (from a second count at half the budget) and the host syncs. Where the method's
core compiles (``compile=True``: one ``torch.compile(fullgraph=True)`` graph), the compiled
call is timed too, its one-off compile time apart; cases with a budget above
``--compile-max-k`` skip it (the greedy loop is unrolled into the graph, so compile time grows
with the budget).

Usage::

    python benchmarks/selection.py [--repeats 7] [--threads 1] [--no-compile] \\
        [--cases image next video] [--out benchmarks/results/selection.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Compile times without Inductor's graph caches (left by earlier runs or tests), which would make
# a recompile look nearly free. Set before torch reads its configuration.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch

import visprune
from visprune.bench import machine_description
from visprune.compiled import SelectionNotCompilable
from visprune.dispatch import DispatchCounts

PAPER_METHODS = ["divprune", "otprune", "rediprune", "resprune", "trimtokenator"]
BASELINES = ["random", "uniform"]
PRE_LLM = ["cdpruner", "vispruner", "visionzip"]
IN_LLM = ["fastv", "pdrop", "dart"]
TEXT_TOKENS = 40
#: CLS attention heads and key width of the vision-tower context (CLIP ViT-L/14: 16 x 64).
HEADS, KEY_WIDTH = 16, 64


@dataclass
class Case:
    """One benchmark shape: ``frames`` images of ``n`` tokens of width ``d``, keeping ``k``."""

    key: str
    label: str
    frames: int
    n: int
    d: int
    k: int


CASES = [
    Case("image", "LLaVA-1.5 image", 1, 576, 4096, 64),
    Case("next", "LLaVA-NeXT image", 1, 2880, 4096, 320),
    Case("video", "video, 32 frames", 32, 144, 1024, 16),
]


def clock(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (case.frames, case.n, case.d) if case.frames > 1 else (case.n, case.d)
    tokens = torch.randn(shape, generator=generator)
    text = torch.randn(TEXT_TOKENS, case.d, generator=generator)
    return tokens, text


def vision_context(case: Case, seed: int = 2) -> visprune.Context:
    """Seeded CLS attention ``(.., H, n)``, keys ``(.., n, hd)`` and CLS states ``(.., d)``."""
    generator = torch.Generator().manual_seed(seed)
    lead = (case.frames,) if case.frames > 1 else ()
    logits = torch.randn(*lead, HEADS, case.n, generator=generator)
    return visprune.Context(
        cls_attention=logits.softmax(dim=-1),
        vision_keys=torch.randn(*lead, case.n, KEY_WIDTH, generator=generator),
        cls_state=torch.randn(*lead, case.d, generator=generator),
    )


def runner(
    method: str, tokens: torch.Tensor, text: torch.Tensor, k: int, context, compile: bool = False
):
    """One call of ``method``: ``visprune.select`` with what it needs, or ``reduce`` for a
    merging method (its kept indices are returned, to compare batched and per-frame runs)."""
    chosen = visprune.get_method(method, budget=k)
    if chosen.merges:
        if compile:
            raise SelectionNotCompilable(f"{method} merges tokens; only selection compiles.")
        return lambda: chosen.reduce(tokens, None, context).kept
    extra = {"cls_attention": context.cls_attention} if "cls_attention" in chosen.uses else {}
    return lambda: visprune.select(chosen, tokens, k, text=text, compile=compile, **extra)


def counted(run) -> DispatchCounts:
    """The dispatched ops and host syncs of one call of ``run``."""
    with DispatchCounts() as counts:
        run()
    return counts


def launch_counts(run, half_run, k: int) -> dict:
    """Ops and host syncs per call, and the marginal ops per pick between ``k // 2`` and ``k``."""
    full, half = counted(run), counted(half_run)
    return {
        "ops": full.ops,
        "ops_per_pick": (full.ops - half.ops) / (k - k // 2),
        "syncs": full.syncs,
    }


def graph_break(error: Exception) -> str:
    """Where a core breaks the graph (``file:line in function``), from the error's message."""
    message = str(error)
    if " At " in message:
        return "breaks at " + message.split(" At ", 1)[1].split(": `", 1)[0]
    return message.split(": ", 1)[-1].split(". ")[0]


def compiled_timing(method: str, tokens, text, case: Case, context, repeats: int, eager) -> dict:
    """Compile time (the first call) and the median compiled call, timed alternately with the
    eager call; ``{"compiled": reason}`` when the core does not compile."""
    try:
        run = runner(method, tokens, text, case.k, context, compile=True)
        compile_s = clock(run)
    except SelectionNotCompilable as error:
        return {"compiled": "no: " + graph_break(error)}
    same = torch.equal(run(), eager())
    eager_times, compiled_times = [], []
    for _ in range(repeats):
        eager_times.append(clock(eager))
        compiled_times.append(clock(run))
    return {
        "compiled": "yes" if same else "DIFFERENT PICKS",
        "compile_s": compile_s,
        "compiled_ms": 1e3 * statistics.median(compiled_times),
        "eager_alt_ms": 1e3 * statistics.median(eager_times),
    }


def frame_context(context, frame: int):
    """The vision-tower context of one video frame."""
    return visprune.Context(
        cls_attention=context.cls_attention[frame],
        vision_keys=context.vision_keys[frame],
        cls_state=context.cls_state[frame],
    )


def measure(case: Case, method: str, repeats: int, compile_max_k: int | None) -> dict:
    tokens, text = inputs(case)
    context = vision_context(case)
    run = runner(method, tokens, text, case.k, context)
    counts = launch_counts(run, runner(method, tokens, text, case.k // 2, context), case.k)
    gram = lambda: tokens @ tokens.mT  # noqa: E731
    run(), gram()  # warm-up
    method_times, gram_times = [], []
    for _ in range(repeats):
        gram_times.append(clock(gram))
        method_times.append(clock(run))
    row = {
        "case": case.label,
        "method": method,
        "ms": 1e3 * statistics.median(method_times),
        "spread": 1e3 * (max(method_times) - min(method_times)),
        "gram_ms": 1e3 * statistics.median(gram_times),
    }
    row["ratio"] = row["ms"] / row["gram_ms"]
    row.update(counts)
    if compile_max_k is not None and case.k <= compile_max_k:
        row.update(compiled_timing(method, tokens, text, case, context, repeats, run))
    if case.frames > 1:
        singles = [
            runner(method, frame, text, case.k, frame_context(context, number))
            for number, frame in enumerate(tokens)
        ]
        loop = lambda: [single() for single in singles]  # noqa: E731
        loop_times = [clock(loop) for _ in range(max(3, repeats // 2))]
        row["loop_ms"] = 1e3 * statistics.median(loop_times)
        row["identical"] = torch.equal(torch.stack(loop()), run())
    return row


def llama_layer(hidden: int = 4096, heads: int = 32, intermediate: int = 11008):
    """A random-weight Llama decoder layer of LLaVA-1.5-7B's size and its rotary embedding."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        num_hidden_layers=1,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(3)
    return LlamaDecoderLayer(config, layer_idx=0).eval(), LlamaRotaryEmbedding(config)


def measure_in_llm(method: str, repeats: int, layer_and_rotary) -> dict:
    """Score recomputation at one layer plus the selection, against a Gram of the visual
    tokens and one forward of the layer (SDPA, causal) on the whole sequence."""
    from visprune.adapters import layer_signals

    layer, rotary = layer_and_rotary
    n, k = 576, 64
    length = n + TEXT_TOKENS
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(1, length, layer.hidden_size, generator=generator)
    positions = torch.arange(length)[None]
    cos, sin = rotary(hidden, positions)
    image = slice(5, 5 + n)  # the image after five prompt tokens, as in end_to_end.py
    chosen = visprune.get_method(method, budget=k)
    mask = torch.ones(1, length, dtype=torch.bool)
    query = torch.tensor([length - 1])

    def run(k: int = k):
        with torch.no_grad():
            if chosen.signal == "attention":
                scores = layer_signals.last_token_attention(layer, hidden, cos, sin, query, mask)
                return visprune.select(chosen, hidden[0, image], k, scores=scores[0, image])
            norms = layer_signals.key_norms(layer, hidden, cos, sin)[0]
            states = hidden[0]
            text = torch.cat([states[:5], states[5 + n :]])
            text_scores = torch.cat([norms[:5], norms[5 + n :]])
            return visprune.select(
                chosen, states[image], k, scores=norms[image], text=text, text_scores=text_scores
            )

    counts = launch_counts(run, lambda: run(k // 2), k)

    visual = hidden[0, image]
    gram = lambda: visual @ visual.T  # noqa: E731

    def forward():
        with torch.no_grad():
            layer(hidden, position_embeddings=(cos, sin), attention_mask=None)

    run(), gram(), forward()  # warm-up
    method_times, gram_times, layer_times = [], [], []
    for _ in range(repeats):
        gram_times.append(clock(gram))
        method_times.append(clock(run))
        layer_times.append(clock(forward))
    row = {
        "case": "LLaVA-1.5 in-LLM (one 4096 layer)",
        "method": method,
        "ms": 1e3 * statistics.median(method_times),
        "spread": 1e3 * (max(method_times) - min(method_times)),
        "gram_ms": 1e3 * statistics.median(gram_times),
        "layer_ms": 1e3 * statistics.median(layer_times),
    }
    row["ratio"] = row["ms"] / row["gram_ms"]
    row.update(counts)
    return row


def render(rows: list[dict], command: str, repeats: int, compile_max_k: int | None) -> str:
    lines = [
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
    compiled = [row for row in rows if "compiled" in row]
    if compiled:
        lines += [
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--methods", nargs="*", default=PAPER_METHODS + BASELINES + PRE_LLM + IN_LLM
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/selection.md"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--compile-max-k",
        type=int,
        default=64,
        help="time compile=True for cases with at most this budget (compile grows with it)",
    )
    parser.add_argument("--no-compile", action="store_true", help="time eager calls only")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=[case.key for case in CASES],
        default=[case.key for case in CASES],
        help="shapes to time (image: LLaVA-1.5, next: LLaVA-NeXT, video: 32 frames)",
    )
    args = parser.parse_args(argv)
    compile_max_k = None if args.no_compile else args.compile_max_k
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    layer_methods = [m for m in args.methods if visprune.METHODS[m].stage == "layer"]
    outside = [m for m in args.methods if m not in layer_methods]
    in_llm = layer_methods if "image" in args.cases else []  # a LLaVA-1.5 layer
    for case in [case for case in CASES if case.key in args.cases]:
        for method in outside:
            row = measure(case, method, args.repeats, compile_max_k)
            loop = f"  loop {row['loop_ms']:.1f} ms" if "loop_ms" in row else ""
            compiled = f"  compiled {row['compiled_ms']:.1f} ms" if "compiled_ms" in row else ""
            print(
                f"{row['case']:<20} {row['method']:<14} {row['ms']:9.1f} ms "
                f"{row['ratio']:6.2f}x Gram  {row['ops']} ops {row['syncs']} syncs{loop}{compiled}",
                flush=True,
            )
            rows.append(row)
    layer = llama_layer() if in_llm else None
    for method in in_llm:
        row = measure_in_llm(method, args.repeats, layer)
        print(
            f"{row['case']:<20} {row['method']:<14} {row['ms']:9.1f} ms "
            f"{row['ratio']:6.2f}x Gram  {100 * row['ms'] / row['layer_ms']:.1f} % of the layer",
            flush=True,
        )
        rows.append(row)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, command, args.repeats, compile_max_k))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
