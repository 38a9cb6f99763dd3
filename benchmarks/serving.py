"""Serving load with vLLM: visprune's plugin against unpruned vLLM, side by side in one run.

OpenAI-compatible vLLM servers on localhost serve the same random-weight model, one unpruned and
one per method with ``--hf-overrides '{"visprune": {"method": ..., "budget": 64}}'``. Two
families (``--family``): LLaVA-1.5-shaped (the model of ``benchmarks/end_to_end.py``: Llama LM
hidden 1024 x 12 layers, 576 visual tokens per 336-px image) and Qwen2.5-VL-shaped
(``benchmarks/_qwen_checkpoint.py``: Qwen2 LM hidden 1024 x 8 layers, 391 visual tokens per 640
x 480 image, the 7B's share of vision-tower FLOPs); a 40-token prompt. Measurement windows
alternate between the servers (round by round, so machine noise hits all alike); in each window
a fixed number of concurrent clients sends streamed chat requests, each with one image and
``--max-tokens`` generated tokens, for a fixed time; every request carries a new image
(:class:`Images`), as in real traffic, so no cache can skip an earlier request's work. Reported
per configuration (medians over rounds): requests/s, time to first token p50/p99, output
tokens/s, and the throughput gain against the FLOPs model's prefill prediction
(``visprune.flops.model_flops``, unpruned / pruned prefill of the whole model, vision tower
included). Each family's results are one section of the results file; the other sections are
kept.

Runs in the vLLM virtualenv (``make install-vllm``)::

    .venv-vllm/bin/python benchmarks/serving.py [--family llava|qwen2_5_vl] [--rounds 3]
        [--window 20] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _llava_checkpoint import write_checkpoint  # noqa: E402
from _qwen_checkpoint import (  # noqa: E402
    QWEN_LAYERS,
    QWEN_VISION_DEPTH,
    image_grid,
    qwen2_5_vl_7b_config,
    vision_share,
    write_qwen_checkpoint,
)
from _serving_load import Images, Server, window  # noqa: E402
from end_to_end import PROMPT_TOKENS  # noqa: E402
from visprune.bench import machine_description  # noqa: E402
from visprune.flops import model_flops  # noqa: E402

TITLE = "# Serving with vLLM: visprune plugin vs unpruned"


@dataclass(frozen=True)
class Setup:
    """What one family's run serves: its section of the results file, the image every request
    carries and the visual tokens it makes."""

    title: str
    image_size: tuple[int, int]  # (width, height) in pixels, before the processor resizes
    visual_tokens: int
    grids: list[tuple[int, int, int]] | None  # Qwen: the image's (t, h, w) patch grid
    describe: Callable[[int], str]  # text tokens -> the model's description


def llava_setup(directory: Path, args: argparse.Namespace) -> Setup:
    write_checkpoint(directory, args.hidden, args.layers)
    return Setup(
        "Random-weight LLaVA-1.5-shaped model",
        (336, 336),
        576,
        None,
        lambda _: (
            f"random-weight LLaVA layout (Llama LM hidden {args.hidden} x {args.layers} "
            "layers, CLIP 2 x 256 at 336 px: 576 visual tokens)"
        ),
    )


#: A common photo size: 644 x 476 px after the processor rounds it to 28-px blocks.
QWEN_IMAGE = (640, 480)


def qwen_setup(directory: Path, args: argparse.Namespace) -> Setup:
    write_qwen_checkpoint(directory, args.hidden, args.layers, args.vision_depth)
    grid = image_grid(directory, Images(QWEN_IMAGE).image(0))
    visual = grid[0] * grid[1] * grid[2] // 4

    def describe(text_tokens: int) -> str:
        from transformers import AutoConfig

        share = vision_share(AutoConfig.from_pretrained(directory), grid, text_tokens)
        reference = vision_share(qwen2_5_vl_7b_config(), grid, text_tokens)
        return (
            f"random-weight Qwen2.5-VL layout (`benchmarks/_qwen_checkpoint.py`: Qwen2 LM hidden "
            f"{args.hidden} x {args.layers} layers, heads of 128, 4 query heads per key/value "
            f"head, MLP 5.25x wide; vision tower 512 wide x {args.vision_depth} blocks, 112-px "
            "windows, full attention in the last block) on "
            f"{QWEN_IMAGE[0]} x {QWEN_IMAGE[1]} images, resized by the processor to "
            f"{grid[2] * 14} x {grid[1] * 14} px: {grid[1]} x {grid[2]} patches, "
            f"{visual} visual tokens after the 2 x 2 merge. The vision tower and merger, which "
            f"run on every patch whatever the budget, are {share:.1%} of an unpruned request's "
            f"prefill FLOPs (Qwen2.5-VL-7B on the same request: {reference:.1%})"
        )

    return Setup("Random-weight Qwen2.5-VL-shaped model", QWEN_IMAGE, visual, [grid], describe)


SETUPS = {"llava": llava_setup, "qwen2_5_vl": qwen_setup}
#: Language-model depth per family when --layers is not given.
LAYERS = {"llava": 12, "qwen2_5_vl": QWEN_LAYERS}


def predicted_gains(model_dir: Path, setup: Setup, budget: int, text_tokens: int, steps: int):
    """Unpruned / pruned FLOPs of the whole model (vision tower included): prefill alone, and
    prefill plus ``steps - 1`` decode steps (the first output token comes from the prefill)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)

    def total(kept: int | None) -> tuple[float, float]:
        counts = model_flops(
            config,
            setup.visual_tokens,
            text_tokens,
            grids=setup.grids,
            kept_visual_tokens=kept,
            decode_steps=steps - 1,
        )
        return counts["prefill"].total, counts["prefill"].total + counts["decode"].total

    full, pruned = total(None), total(budget)
    return full[0] / pruned[0], full[1] / pruned[1]


def engine_table(engine: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """Mean engine seconds per request, per workload and server, from :meth:`Server.engine_totals`
    differences over each workload's windows."""
    rows = [
        "Where a request's time goes in the engine (vLLM's own histograms, mean over the "
        "requests each server handled during a workload): queued, prefill (vision tower, "
        "selection and language-model prefill) and decode; prefill gain = unpruned / pruned "
        "prefill seconds per request.",
        "",
        "| output tokens | config | queued (s) | prefill (s) | decode (s) | requests "
        "| prefill gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for steps, servers in engine.items():
        base = servers["unpruned"]["prefill"] / max(servers["unpruned"]["count"], 1)
        for name, totals in servers.items():
            count = max(totals["count"], 1)
            prefill = totals["prefill"] / count
            gain = "—" if name == "unpruned" or not prefill else f"{base / prefill:.2f}x"
            rows.append(
                f"| {steps} | {name} | {totals['queue'] / count:.3f} | {prefill:.3f} | "
                f"{totals['decode'] / count:.3f} | {totals['count']:.0f} | {gain} |"
            )
    return [*rows, ""]


def write_section(path: Path, title: str, body: list[str]) -> str:
    """Replace (or add, at the end) the ``## title`` section of the results file, keeping the
    other sections; returns the whole file."""
    sections: dict[str, str] = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            heading, _, rest = chunk.partition("\n")
            sections[heading] = rest.strip("\n")
    sections[title] = "\n".join(body).strip("\n")
    text = TITLE + "\n" + "".join(f"\n## {h}\n\n{rest}\n" for h, rest in sections.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def table(samples: dict, prediction: tuple[float, float], steps: int) -> list[str]:
    def median(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    base = median("unpruned", "requests_per_s")
    rows = [
        f"**{steps} output token{'s' if steps > 1 else ''} per request.** FLOPs prediction "
        f"(unpruned / pruned, `visprune.flops.model_flops`): prefill {prediction[0]:.2f}x, "
        f"prefill + decode {prediction[1]:.2f}x.",
        "",
        "| config | prompt tokens | requests/s | TTFT p50 (s) | TTFT p99 (s) | output tokens/s "
        "| throughput gain | gain / prefill prediction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in samples:
        gain = median(name, "requests_per_s") / base
        rows.append(
            f"| {name} | {samples[name][0]['prompt_tokens']} | "
            f"{median(name, 'requests_per_s'):.3f} | "
            f"{median(name, 'ttft_p50'):.2f} | {median(name, 'ttft_p99'):.2f} | "
            f"{median(name, 'output_tokens_per_s'):.2f} | {gain:.2f}x | "
            + ("—" if name == "unpruned" else f"{gain / prediction[0]:.2f}")
            + " |"
        )
    rows.append("")
    # The same ratio round by round (each pair of windows ran back to back): its spread shows
    # how much the machine's other load moved the medians above.
    for name in list(samples)[1:]:
        pairs = zip(samples[name], samples["unpruned"], strict=True)
        gains = [
            f"{p['requests_per_s'] / u['requests_per_s']:.2f}x" if u["requests_per_s"] else "—"
            for p, u in pairs
        ]
        rows += [f"Throughput gain of {name} round by round: {', '.join(gains)}.", ""]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--family",
        choices=sorted(SETUPS),
        default="llava",
        help="model layout served; each family is one section of the results file",
    )
    parser.add_argument("--methods", nargs="+", default=["divprune", "rediprune"])
    parser.add_argument("--budget", type=int, default=64, help="kept visual tokens per image")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per window")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--max-tokens",
        type=int,
        nargs="+",
        default=[1, 16],
        help="output tokens per request; one workload per value (1 = prefill throughput)",
    )
    parser.add_argument("--hidden", type=int, default=1024, help="language-model width")
    parser.add_argument(
        "--layers",
        type=int,
        help=f"language-model depth (default: {', '.join(f'{k} {v}' for k, v in LAYERS.items())})",
    )
    parser.add_argument(
        "--vision-depth",
        type=int,
        default=QWEN_VISION_DEPTH,
        help="vision-tower blocks (qwen2_5_vl only)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serving.md")
    args = parser.parse_args(argv)
    if args.layers is None:
        args.layers = LAYERS[args.family]
    if args.family == "qwen2_5_vl" and (args.hidden % 128 or args.hidden < 128):
        parser.error(f"--hidden must be a multiple of 128 (heads of 128), got {args.hidden}")
    if min(args.budget, args.rounds, args.clients, args.layers, args.vision_depth) < 1:
        parser.error("--budget, --rounds, --clients, --layers and --vision-depth must be >= 1")
    if min(args.max_tokens) < 1 or args.window <= 0:
        parser.error("--max-tokens must be >= 1 and --window > 0")

    # The servers' logs stay in ``work`` (errors point to them); the checkpoint goes at the end.
    work = Path(tempfile.mkdtemp(prefix="visprune-serving-"))
    model_dir = work / "model"
    try:
        setup = SETUPS[args.family](model_dir, args)
        if args.budget >= setup.visual_tokens:
            parser.error(
                f"--budget {args.budget} keeps every one of the {setup.visual_tokens} visual "
                "tokens; choose a smaller budget"
            )
        command = "python benchmarks/serving.py " + shlex.join(
            argv if argv is not None else sys.argv[1:]
        )
        serve_and_report(args, setup, model_dir, work, command)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
        if not any(work.iterdir()):  # stopped before any server wrote a log
            work.rmdir()


def serve_and_report(
    args: argparse.Namespace, setup: Setup, model_dir: Path, work: Path, command: str
) -> None:
    """Start the servers, run the alternating windows, write the family's section."""
    configs: dict[str, dict | None] = {"unpruned": None}
    configs.update({m: {"method": m, "budget": args.budget} for m in args.methods})
    context = setup.visual_tokens + PROMPT_TOKENS + max(args.max_tokens) + 64
    servers = {
        name: Server(model_dir, override, context, work / f"{name}.log")
        for name, override in configs.items()
    }
    images = Images(setup.image_size)
    samples = {steps: {name: [] for name in configs} for steps in args.max_tokens}
    engine: dict[int, dict[str, dict[str, float]]] = {}  # per workload, per server
    load_before = os.getloadavg()[1]
    try:
        for server in servers.values():
            server.wait()
        for server in servers.values():  # warm-up: first requests pay one-off costs
            window(server.url, args.clients, 10.0, images, max(args.max_tokens))
        before = {name: server.engine_totals() for name, server in servers.items()}
        for steps in args.max_tokens:
            for round_number in range(args.rounds):
                for name, server in servers.items():
                    result = window(server.url, args.clients, args.window, images, steps)
                    samples[steps][name].append(result)
                    print(f"{steps} tokens, round {round_number + 1}, {name}: {result}", flush=True)
            after = {name: server.engine_totals() for name, server in servers.items()}
            engine[steps] = {
                name: {key: after[name][key] - before[name][key] for key in after[name]}
                for name in servers
            }
            before = after
        binding = servers["unpruned"].binding()
        load_after = os.getloadavg()[1]
    finally:
        for server in servers.values():
            server.stop()

    visual = setup.visual_tokens
    text_tokens = samples[args.max_tokens[0]]["unpruned"][0]["prompt_tokens"] - visual
    import vllm

    lines = [
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {machine_description()}; vLLM {vllm.__version__}.",
        "",
        f"Model: {setup.describe(text_tokens)}. One image + {text_tokens} text tokens per "
        "request (streamed chat completions, ignore_eos), float32; every request carries a new "
        "image, so neither the prefix cache nor the encoder cache reuses earlier work. "
        f"{args.clients} concurrent closed-loop clients per {args.window:g} s window; windows "
        f"alternate between the servers, {args.rounds} rounds per workload; medians over "
        f"rounds. Budget {args.budget} of {visual} tokens per image. Target: gain / prefill "
        "prediction >= 0.8 on the prefill-bound workload (1 output token).",
        "",
        f"vLLM's CPU worker thread binding ({os.cpu_count()} cores): {binding}; the front end "
        "(HTTP, image decoding and processing), the engine loop and the benchmark's clients "
        f"share the rest. Load average (5 min) {load_before:.1f} before the servers started, "
        f"{load_after:.1f} at the end.",
        "",
    ]
    for steps in args.max_tokens:
        prediction = predicted_gains(model_dir, setup, args.budget, text_tokens, steps)
        lines += table(samples[steps], prediction, steps)
    lines += engine_table(engine)
    print(write_section(args.out, setup.title, lines))


if __name__ == "__main__":
    main()
