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
import sys
from pathlib import Path

# Compile times without Inductor's graph caches (left by earlier runs or tests), which would make
# a recompile look nearly free. Set before torch reads its configuration.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import visprune  # noqa: E402
from _selection_cases import (  # noqa: E402
    CASES,
    TEXT_TOKENS,
    Case,
    frame_context,
    inputs,
    runner,
    vision_context,
)
from _selection_report import render  # noqa: E402
from _timing import clock, counted, first_sentence, graph_break_site, median_ms  # noqa: E402
from visprune.compiled import SelectionNotCompilable  # noqa: E402

PAPER_METHODS = ["divprune", "otprune", "rediprune", "resprune", "trimtokenator"]
BASELINES = ["random", "uniform"]
PRE_LLM = ["cdpruner", "vispruner", "visionzip"]
IN_LLM = ["fastv", "pdrop", "dart"]


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
    site = graph_break_site(error)
    return "breaks at " + site if site is not None else first_sentence(error)


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
        "compiled_ms": median_ms(compiled_times),
        "eager_alt_ms": median_ms(eager_times),
    }


def speed_row(case: str, method: str, method_times: list[float], gram_times: list[float]) -> dict:
    """A table row from the timings: medians in ms, the method's spread and its ratio to the
    Gram's median."""
    row = {
        "case": case,
        "method": method,
        "ms": median_ms(method_times),
        "spread": 1e3 * (max(method_times) - min(method_times)),
        "gram_ms": median_ms(gram_times),
    }
    row["ratio"] = row["ms"] / row["gram_ms"]
    return row


def measure(case: Case, method: str, repeats: int, compile_max_k: int | None) -> dict:
    """Eager time against the Gram, dispatch counts, compiled time (up to ``compile_max_k``)
    and, for video, the per-frame loop of ``method`` on ``case``."""
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
    row = speed_row(case.label, method, method_times, gram_times)
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
        row["loop_ms"] = median_ms(loop_times)
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
    row = speed_row("LLaVA-1.5 in-LLM (one 4096 layer)", method, method_times, gram_times)
    row["layer_ms"] = median_ms(layer_times)
    row.update(counts)
    return row


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
