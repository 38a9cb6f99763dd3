"""How well each method's kept tokens match all tokens: W2, coverage, relevance retained.

Runs every selection method at three budgets on the parity features shipped with the tests
(structured and Gaussian token sets, with their prompt-text embeddings) and reports the mean
Gaussian 2-Wasserstein (Bures) distance, coverage and relevance retained per method and budget,
then states whether OTPrune has the lowest W2, as its paper claims.

Usage::

    python benchmarks/alignment.py [--out benchmarks/results/alignment.md]
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


def evaluate() -> dict[tuple[str, float], dict[str, float]]:
    """Mean metrics per (method, budget), plus the mean W2 rank among methods per token set."""
    table: dict[tuple[str, float], dict[str, list[float]]] = {}
    for _name, tokens, text, query_text in parity_cases():
        for budget in BUDGETS:
            w2 = {}
            for method in METHODS:
                given = query_text if method == "rediprune" else text
                kept = visprune.select(method, tokens, budget, text=given)
                report = alignment_report(tokens, kept, text)
                w2[method] = report["w2"]
                cell = table.setdefault((method, budget), {})
                for key, value in report.items():
                    cell.setdefault(key, []).append(value)
            # Sets differ in scale; ranks compare methods fairly across them.
            for rank, method in enumerate(sorted(METHODS, key=w2.__getitem__), start=1):
                table[(method, budget)].setdefault("w2_rank", []).append(rank)
    return {key: {m: statistics.fmean(v) for m, v in cell.items()} for key, cell in table.items()}


def render(means: dict, command: str, cases: list[str]) -> str:
    lines = [
        "# Distribution alignment of the kept tokens",
        "",
        f"Command: `{command}`",
        "",
        f"Token sets: the parity features in `tests/data` ({', '.join(cases)}), each with its "
        "prompt-text embeddings. Means over the sets. W2: Gaussian 2-Wasserstein (Bures) distance "
        "between all tokens and the kept ones (lower is better). Coverage: mean cosine distance "
        "from each dropped token to its nearest kept token (lower is better). Relevance: share "
        "of the positive text relevance kept (higher is better).",
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/alignment.md"))
    args = parser.parse_args(argv)
    means = evaluate()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    text = render(means, command, [name for name, *_ in parity_cases()])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
