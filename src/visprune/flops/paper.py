"""Analytic prefill FLOPs: the formula the DivPrune / OTPrune papers report (pure math).

``F(n) = T (4 n d² + 2 n² d + 2 n d m)`` for a decoder of ``T`` layers, hidden width ``d`` and FFN
width ``m`` on ``n`` tokens: the q/k/v/o projections, the attention scores and weighted sum, and a
two-matrix FFN. Each term is a count of multiply-adds (``4 n d²`` is the four ``d x d``
projections of ``n`` tokens): half the FLOPs of those terms when a multiply-add counts as two
FLOPs, as :func:`visprune.flops.model_flops` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Prompt text lengths the papers use for COCO, Flickr30k, GQA, MMB, MME, MMMU, NoCaps, OK-VQA,
#: POPE, SQA and SEED (system prompt not counted).
PAPER_TEXT_LENGTHS = (15, 15, 23, 83, 25, 113, 15, 39, 21, 91, 57)

FORMULAS = ("paper",)


def prefill_flops(
    seq_len: int, hidden: int, ffn: int, layers: int, formula: str = "paper"
) -> float:
    """Prefill FLOPs of a decoder on ``seq_len`` tokens.

    Parameters
    ----------
    seq_len : int
        Tokens in the prompt (text plus kept visual tokens).
    hidden : int
        Hidden width ``d``.
    ffn : int
        FFN width ``m``.
    layers : int
        Layer count ``T``.
    formula : {"paper"}
        ``"paper"``: ``T (4 n d² + 2 n² d + 2 n d m)``, as published by DivPrune and OTPrune.

    Returns
    -------
    float
        FLOPs.
    """
    if formula not in FORMULAS:
        raise ValueError(f"unknown FLOPs formula {formula!r}; available: {', '.join(FORMULAS)}.")
    for name, value in (("seq_len", seq_len), ("hidden", hidden), ("ffn", ffn), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
    n, d, m = seq_len, hidden, ffn
    return float(layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m))


@dataclass(frozen=True)
class PaperRow:
    """One row of the papers' efficiency table.

    Attributes
    ----------
    full_tflops : float
        Mean prefill TFLOPs over the benchmarks' text lengths, unpruned.
    pruned_tflops : float
        Mean prefill TFLOPs over the benchmarks' text lengths, pruned.
    percent : float
        Mean over benchmarks of the pruned / unpruned FLOPs ratio, in percent.
    """

    full_tflops: float
    pruned_tflops: float
    percent: float


def paper_table_row(
    hidden: int,
    ffn: int,
    layers: int,
    visual_tokens: int = 576,
    keep_ratio: float = 0.098,
    text_lengths: tuple[int, ...] = PAPER_TEXT_LENGTHS,
) -> PaperRow:
    """Reproduce a row of the published FLOPs table.

    LLaVA-1.5-7B (4096, 11008, 32) gives 3.228 -> 0.512 TFLOPs (15.63 %); LLaVA-1.5-13B
    (5120, 13824, 40) gives 6.281 -> 1.002 (15.71 %). The kept count is
    ``round(keep_ratio * visual_tokens)``, the budget rule of every method.
    """
    kept = max(1, round(keep_ratio * visual_tokens))
    full = [prefill_flops(visual_tokens + t, hidden, ffn, layers) for t in text_lengths]
    pruned = [prefill_flops(kept + t, hidden, ffn, layers) for t in text_lengths]
    ratios = [p / f for p, f in zip(pruned, full, strict=True)]
    count = len(text_lengths)
    return PaperRow(
        full_tflops=sum(full) / count / 1e12,
        pruned_tflops=sum(pruned) / count / 1e12,
        percent=100 * sum(ratios) / count,
    )
