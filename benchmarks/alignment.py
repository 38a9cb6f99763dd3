"""How well each method's kept tokens match all tokens: W2, coverage, relevance retained.

Runs every selection method at three budgets on two kinds of token sets and reports the mean
Gaussian 2-Wasserstein (Bures) distance, coverage and relevance retained per method and budget,
then states whether OTPrune has the lowest W2, as its paper claims:

- the bundled demo model's real features: each test image's 64 visual tokens as the language
  model receives them (projector output), the question after the image as text, and the tokens
  each method keeps inside the model (``visprune.apply``, the real adapter path);
- the parity features shipped with the tests (structured and Gaussian token sets, with their
  prompt-text embeddings).

Usage::

    python benchmarks/alignment.py [--demo-model DIR] [--demo-samples 200] \
        [--out benchmarks/results/alignment.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

import visprune
from visprune.metrics import alignment_report

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
BUDGETS = (0.111, 0.222, 0.333)
METHODS = ["divprune", "otprune", "rediprune", "resprune", "trimtokenator", "random", "uniform"]


def parity_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(name, tokens (n, d), text in the token space (m, d), text for ReDiPrune (m, d_t))."""
    vectors = np.load(DATA / "parity_vectors.npz")
    names = sorted(
        {case["case"] for case in json.loads((DATA / "parity_vectors.json").read_text())}
    )
    as_tensor = lambda key: torch.from_numpy(vectors[key].astype(np.float32))  # noqa: E731
    return [
        (
            name,
            as_tensor(f"{name}/features"),
            as_tensor(f"{name}/text_llm"),
            as_tensor(f"{name}/text"),
        )
        for name in names
    ]


def demo_cases(model_dir: Path | None, samples: int) -> tuple[list, dict]:
    """Token sets of the demo model and what every method keeps of them inside the model.

    Returns
    -------
    cases : list of (tokens ``(64, d)``, text ``(m, d)``)
        Per test question: the image's projector output and the embeddings of the question
        after the image (what the language model receives).
    kept : dict
        ``(method, budget) -> list`` of kept-index tensors, one per case.
    """
    from visprune.demo import model as demo_model
    from visprune.demo import task
    from visprune.demo.evaluate import Encoder, prompt_batch
    from visprune.demo.run import bundled_checkpoint

    model, processor = demo_model.load(model_dir or bundled_checkpoint())
    encoder = Encoder(processor.tokenizer)
    questions = task.make_split(0, "test", samples)
    batch = prompt_batch(questions, encoder)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=batch["pixel_values"])
        features = torch.stack(list(getattr(features, "pooler_output", features)))
        embed = model.get_input_embeddings()
        texts = [embed(torch.tensor(encoder.words(q.question))) for q in questions]
    cases = list(zip(features.reshape(samples, task.NUM_CELLS, -1), texts, strict=True))
    kept: dict[tuple[str, float], list] = {}
    for budget in BUDGETS:
        for method in METHODS:
            with visprune.apply(model, method, budget=budget) as handle, torch.no_grad():
                model(**batch, logits_to_keep=1)
                kept[(method, budget)] = [record.kept for record in handle.selections]
    return cases, kept


def parity_kept() -> tuple[list, dict]:
    """The parity token sets and what every method keeps of them (``visprune.select``)."""
    cases, kept = [], {}
    for _name, tokens, text, query_text in parity_cases():
        cases.append((tokens, text))
        for budget in BUDGETS:
            for method in METHODS:
                given = query_text if method == "rediprune" else text
                pick = visprune.select(method, tokens, budget, text=given)
                kept.setdefault((method, budget), []).append(pick)
    return cases, kept


def evaluate(cases: list, kept: dict) -> dict[tuple[str, float], dict[str, float]]:
    """Mean metrics per (method, budget), plus the mean W2 rank among methods per token set."""
    table: dict[tuple[str, float], dict[str, list[float]]] = {}
    for index, (tokens, text) in enumerate(cases):
        for budget in BUDGETS:
            w2 = {}
            for method in METHODS:
                report = alignment_report(tokens, kept[(method, budget)][index], text)
                w2[method] = report["w2"]
                cell = table.setdefault((method, budget), {})
                for key, value in report.items():
                    cell.setdefault(key, []).append(value)
            # Sets differ in scale; ranks compare methods fairly across them.
            for rank, method in enumerate(sorted(METHODS, key=w2.__getitem__), start=1):
                table[(method, budget)].setdefault("w2_rank", []).append(rank)
    return {key: {m: statistics.fmean(v) for m, v in cell.items()} for key, cell in table.items()}


def render(means: dict, title: str, description: str) -> str:
    """One markdown section: the table and the verdict on OTPrune's claim."""
    lines = [
        f"## {title}",
        "",
        description,
        "",
        "| method | budget | W2 | mean W2 rank | coverage | relevance |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        for budget in BUDGETS:
            row = means[(method, budget)]
            lines.append(
                f"| {method} | {budget:.1%} | {row['w2']:.4f} | {row['w2_rank']:.2f} | "
                f"{row['coverage']:.4f} | {row['relevance']:.4f} |"
            )
    lines += ["", "Lowest mean W2 rank per budget (OTPrune's paper claims the lowest W2):", ""]
    for budget in BUDGETS:
        ranking = sorted(METHODS, key=lambda m: means[(m, budget)]["w2_rank"])
        place = ranking.index("otprune") + 1
        verdict = "yes" if place == 1 else f"no, OTPrune ranks {place} of {len(METHODS)}"
        lines.append(f"- {budget:.1%}: {ranking[0]}; OTPrune lowest: {verdict}")
    return "\n".join(lines) + "\n"


LEGEND = (
    "Means over the token sets. W2: Gaussian 2-Wasserstein (Bures) distance between all tokens "
    "and the kept ones (lower is better); the rank compares methods on each set (1 = lowest W2). "
    "Coverage: mean cosine distance from each dropped token to its nearest kept token (lower is "
    "better). Relevance: share of the positive text relevance kept (higher is better)."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/alignment.md"))
    parser.add_argument("--demo-model", type=Path, default=None, help="default: bundled model")
    parser.add_argument("--demo-samples", type=int, default=200)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    demo = render(
        evaluate(*demo_cases(args.demo_model, args.demo_samples)),
        "Bundled demo model",
        f"The first {args.demo_samples} test questions of the demo task: each image's 64 visual "
        "tokens as the language model receives them, the question after the image as text, and "
        "the tokens each method keeps inside the model. " + LEGEND,
    )
    names = [name for name, *_ in parity_cases()]
    parity = render(
        evaluate(*parity_kept()),
        "Parity features",
        f"The parity token sets in `tests/data` ({', '.join(names)}), each with its prompt-text "
        "embeddings. " + LEGEND,
    )
    header = ["# Distribution alignment of the kept tokens", "", f"Command: `{command}`", ""]
    text = "\n".join([*header, demo, parity])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
