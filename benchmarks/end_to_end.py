"""End-to-end speed of every method on a LLaVA-shaped model, side by side with unpruned.

A random-weight ``LlavaForConditionalGeneration`` large enough for CPU timings to mean something
(Llama LM: hidden 1024, 12 layers; 576 visual tokens from a small CLIP tower at 336 px; a 40-token
prompt) runs unpruned and with every method at budgets 192 / 128 / 64. The runs are interleaved
round by round (each round measures every configuration once), so machine noise hits all of them
alike, and medians over rounds are reported:

- prefill (time to first token) speed-up against the FLOPs prediction (unpruned / pruned prefill
  FLOPs of the whole model, vision tower included);
- selection time as a share of the unpruned prefill;
- decode ms/token and KV-cache bytes.

Usage::

    python benchmarks/end_to_end.py [--rounds 5] [--out benchmarks/results/end_to_end.md]
        [--methods fastv pdrop dart]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlavaConfig, LlavaForConditionalGeneration

from visprune.bench import machine_description, measure

METHODS = [
    "divprune",
    "otprune",
    "rediprune",
    "resprune",
    "trimtokenator",
    "random",
    "uniform",
    "cdpruner",
    "vispruner",
    "visionzip",
    "fastv",
    "pdrop",
    "dart",
]
BUDGETS = (192, 128, 64)
IMAGE_TOKEN = 31999
PROMPT_TOKENS = 40
NEW_TOKENS = 8


def build_model(hidden: int, layers: int) -> LlavaForConditionalGeneration:
    """Random weights in LLaVA-1.5's layout: 24 x 24 patch grid, Llama LM, MLP projector."""
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 336,
            "patch_size": 14,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": int(hidden * 2.75),
            "num_hidden_layers": layers,
            "num_attention_heads": hidden // 64,
            "num_key_value_heads": hidden // 64,
            "vocab_size": 32000,
            "max_position_embeddings": 4096,
        },
        image_token_index=IMAGE_TOKEN,
        image_seq_length=576,
        vision_feature_layer=-2,
    )
    config._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(config).eval()


def build_inputs() -> dict:
    generator = torch.Generator().manual_seed(1)
    text = torch.randint(1, 31000, (PROMPT_TOKENS,), generator=generator).tolist()
    ids = text[:5] + [IMAGE_TOKEN] * 576 + text[5:]
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": torch.randn(1, 3, 336, 336, generator=generator),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/end_to_end.md"))
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=METHODS, help="default: every method"
    )
    args = parser.parse_args(argv)
    model, inputs = build_model(args.hidden, args.layers), build_inputs()
    configs = [("unpruned", None)] + [(m, b) for b in BUDGETS for m in args.methods]
    samples = interleaved_samples(model, inputs, configs, args.rounds)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    text = render(table_rows(samples, configs), command, args.hidden, args.layers, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text, end="")


def interleaved_samples(model, inputs: dict, configs: list[tuple], rounds: int) -> dict:
    """Per ``(method, budget)``: one :func:`visprune.bench.measure` result a round; every round
    measures every configuration once, after one untimed pass of each."""
    extra = {"suppress_tokens": [IMAGE_TOKEN]}

    def run(method, budget):
        name = None if method == "unpruned" else method
        return measure(
            model,
            inputs,
            name,
            budget,
            new_tokens=NEW_TOKENS,
            warmup=0,
            repeats=1,
            progress=False,
            generate_kwargs=extra,
        )

    for method, budget in configs:  # warm-up: one untimed pass of every configuration
        run(method, budget)
    samples: dict[tuple, list] = {config: [] for config in configs}
    for _ in tqdm(range(rounds), desc="rounds"):
        for config in configs:
            samples[config].append(run(*config))
    return samples


def table_rows(samples: dict, configs: list[tuple]) -> list[tuple]:
    """One row per configuration: medians over the rounds, against the unpruned first one."""

    def median(config, read):
        return statistics.median(read(result) for result in samples[config])

    base = ("unpruned", None)
    base_prefill = median(base, lambda r: r.prefill_s.median)
    base_flops = samples[base][0].flops["prefill_total"]
    rows = []
    for config in configs:
        first = samples[config][0]
        prefill = median(config, lambda r: r.prefill_s.median)
        predicted = base_flops / first.flops["prefill_total"]
        select = median(config, lambda r: r.select_s.median if r.select_s else 0.0)
        rows.append(
            (
                *config,
                first.visual_tokens_after,
                1e3 * prefill,
                base_prefill / prefill,
                predicted,
                (base_prefill / prefill) / predicted,
                100 * select / base_prefill,
                1e3 * median(config, lambda r: r.decode_s_per_token.median),
                first.kv_cache_bytes / 2**20,
            )
        )
    return rows


def render(rows: list[tuple], command: str, hidden: int, layers: int, rounds: int) -> str:
    """The Markdown report: the command, the machine, how it was measured, the table."""
    lines = [
        "# End-to-end speed on a LLaVA-shaped model (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_description()}. Model: random-weight LLaVA layout, Llama LM "
        f"hidden {hidden}, "
        f"{layers} layers, 576 visual tokens (CLIP tower 2 x 256 at 336 px), "
        f"{PROMPT_TOKENS}-token prompt, fp32, batch 1. Medians over {rounds} interleaved "
        f"rounds; decode over {NEW_TOKENS} new tokens.",
        "",
        "Prefill = time to first token (vision tower + projector + selection + LM prefill). "
        "Predicted = unpruned / pruned prefill FLOPs of the whole model (`visprune.flops."
        "model_flops`); achieved = measured speed-up / predicted (target >= 0.8). Selection = "
        "time inside the method as a share of the unpruned prefill (target <= 3 %); for the "
        "methods that prune inside the language model (fastv, dart after layer 2; pdrop at "
        f"layers {', '.join(str(layers * s // 4) for s in (1, 2, 3))} keeping budget, "
        "budget / 2, budget / 4) it includes recomputing their scores there, and their "
        "predicted FLOPs count the layers before each pruning on every visual token; visual "
        "tokens = what the last layers see.",
        "",
        "| method | budget | visual tokens | prefill (ms) | speed-up | predicted | achieved | "
        "selection (% of prefill) | decode (ms/token) | KV cache (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, budget, kept, ms, speed, pred, achieved, share, decode, kv in rows:
        lines.append(
            f"| {method} | {budget or '-'} | {kept} | {ms:.0f} | {speed:.2f}x | {pred:.2f}x | "
            f"{achieved:.2f} | {share:.2f} | {decode:.1f} | {kv:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
