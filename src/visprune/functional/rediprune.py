"""ReDiPrune's pure core: text relevance plus max-min diversity, before the projector; and the
pooling of the prompt into one query vector.

"ReDiPrune: Relevance-Diversity Pre-Projection Token Pruning", https://arxiv.org/abs/2603.24680
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_query, check_tokens_and_k
from .divprune import cosine_distance, max_min_greedy
from .rows import unit_rows
from .text import padded_rows, padded_sum

#: The weight ``α`` of relevance against diversity (the paper's).
ALPHA = 0.5
#: The relevance threshold ``τ``; ``0`` makes every token a candidate.
TAU = 0.0


def rediprune(
    tokens: Tensor,
    query: Tensor,
    k: int,
    alpha: float = ALPHA,
    tau: float = TAU,
    *,
    sort: bool = True,
) -> Tensor:
    """Relevance to the prompt plus max-min diversity.

    First pick ``argmax rel``; then ``argmax_{i ∉ S} (min_{s ∈ S} (1 - v̂_s · v̂_i) + α rel_i)``
    with ``rel_i = cos(v_i, q)``.

    Parameters
    ----------
    tokens : Tensor
        ``(b, n, Cv)`` float32 finite vision features before the projector.
    query : Tensor
        ``(b, Cv)`` float32 pooled prompt query per item, at the vision width
        (:func:`pool_text_queries`, then :func:`match_query_width`).
    k : int
        Picks per item, ``1 <= k < n``.
    alpha : float
        Weight of relevance against diversity, ``>= 0`` (paper: 0.5). ``alpha = 0`` is pure
        diversity after the relevance-based first pick (the published code switches pruning off
        instead).
    tau : float
        Relevance threshold; ``tau <= 0`` makes every token a candidate. Otherwise, when
        ``k < n // 2``, the candidates are the top ``max(3k, k + 1)`` tokens by relevance, else
        the tokens with ``rel >= tau`` (the top ``k`` if fewer pass).
    sort : bool
        Return the picks ascending (default) instead of in greedy order.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 distinct indices.
    """
    check_tokens_and_k("rediprune", tokens, k)
    check_query("rediprune", query, tokens)
    n, d = tokens.shape[1:]
    unit = unit_rows(tokens)
    relevance = (unit @ unit_rows(query).unsqueeze(-1)).squeeze(-1)
    if tau > 0 and k < n // 2:
        # A fixed-size shortlist: gather it (ascending, so ties still go to the lowest index)
        # and run the greedy on the shortlist only.
        shortlist = relevance.topk(min(n, max(3 * k, k + 1)), dim=-1).indices.sort(-1).values
        sub_unit = unit.gather(1, shortlist.unsqueeze(-1).expand(-1, -1, d))
        sub_relevance = relevance.gather(1, shortlist)
        picks = shortlist.gather(1, _relevant_diverse(sub_unit, sub_relevance, None, k, alpha))
    else:
        candidates = None
        if tau > 0:
            candidates = relevance >= tau
            # Items with fewer than k candidates take the top k; decided on the device.
            short = candidates.sum(-1) < k
            top = relevance.topk(k, dim=-1).indices
            fallback = torch.zeros_like(candidates).scatter_(1, top, True)
            candidates = torch.where(short.unsqueeze(-1), fallback, candidates)
        picks = _relevant_diverse(unit, relevance, candidates, k, alpha)
    return picks.sort(dim=-1).values if sort else picks


def _relevant_diverse(
    unit: Tensor, relevance: Tensor, candidates: Tensor | None, k: int, alpha: float
) -> Tensor:
    """The max-min greedy with the bonus ``alpha * rel`` over the candidates (``(b, n)`` bool,
    or all tokens): ``(b, k)`` picks in pick order, the first ``argmax rel``."""
    bonus = alpha * relevance
    if candidates is not None:
        bonus = bonus.masked_fill(~candidates, -torch.inf)
        first = relevance.masked_fill(~candidates, -torch.inf).argmax(dim=-1)
    else:
        first = relevance.argmax(dim=-1)
    return max_min_greedy(cosine_distance(unit, normalised=True), first, k, bonus)


#: At most this many prompt tokens (the last ones) form the query, as published.
MAX_QUERY_TOKENS = 128


def pool_text_query(text: Tensor, max_tokens: int = MAX_QUERY_TOKENS) -> Tensor:
    """Pool one prompt's token embeddings into its query vector: :func:`pool_text_queries` of
    a batch of one.

    Parameters
    ----------
    text : Tensor
        ``(m, D)`` embeddings of the prompt tokens after the image; only the last ``max_tokens``
        rows are used.
    max_tokens : int
        Cap on the rows used.

    Returns
    -------
    Tensor
        ``(D,)`` float32 query; zeros for an empty text, the row itself for a single token.
    """
    return pool_text_queries([text], max_tokens)[0]


def pool_text_queries(texts: list[Tensor], max_tokens: int = MAX_QUERY_TOKENS) -> Tensor:
    """Pool each prompt's token embeddings into one query vector, for a whole batch at once.

    Self-attention over the unit-normalised rows, then a recency-weighted sum:
    ``A = softmax(Ê Êᵀ)``, ``C = A E``, ``q = Σ_l w_l C_l`` with ``w_l ∝ exp(3 l / (L - 1))``
    over the last ``L <= max_tokens`` rows of a prompt.

    Parameters
    ----------
    texts : list of Tensor
        ``b`` prompts ``(m_i, D)``; one tensor repeated (video frames) is pooled once.
    max_tokens : int
        Cap on the rows used of each prompt.

    Returns
    -------
    Tensor
        ``(b, D)`` float32 queries; a zero row for an empty text, the row itself for a single
        token.

    Notes
    -----
    Every prompt is padded to exactly ``max_tokens`` rows and pooled by :func:`pooled_queries`,
    so a prompt alone and the same prompt in any batch run the very same arithmetic (the same
    picks either way), the ops do not grow with the prompts, and the shapes are static.
    """
    distinct = list({id(text): text for text in texts}.values())
    device = distinct[0].device
    rows = padded_rows(distinct, device, rows=max_tokens)
    lengths = torch.tensor([min(len(text), max_tokens) for text in distinct], device=device)
    queries = pooled_queries(rows, lengths)
    if len(distinct) == 1:  # one prompt, or one shared by every item (video frames)
        return queries.expand(len(texts), -1)
    if len(distinct) == len(texts):
        return queries
    slot = {id(text): at for at, text in enumerate(distinct)}
    return queries.index_select(0, torch.tensor([slot[id(text)] for text in texts], device=device))


def pooled_queries(rows: Tensor, lengths: Tensor) -> Tensor:
    """ReDiPrune's query pooling over zero-padded prompts: ``(b, M, D) -> (b, D)``.

    Parameters
    ----------
    rows : Tensor
        ``(b, M, D)`` float32: item ``i``'s ``L_i`` prompt rows first, then zero rows.
    lengths : Tensor
        ``(b,)`` integer ``L_i <= M``; ``L_i = 0`` gives a zero query.

    Returns
    -------
    Tensor
        ``(b, D)`` float32 queries ``q_i = Σ_l w_l (A E)_l``.

    Notes
    -----
    Pad rows get ``-inf`` attention logits and zero recency weight, so they add exact zeros.
    The arithmetic is arranged so that an item's query does not depend on the other items:

    - Matrix products run on the two halves of ``D`` as a batch of ``2 b`` products: a batch of
      one runs torch's single-matrix path, which on a multi-threaded CPU may split a product's
      sums between threads, while each item of a larger batch is summed by one thread; two
      halves make every call a batch of at least two, so a prompt alone rounds as in a batch.
    - ``q = (wᵀ A) E`` instead of ``wᵀ (A E)``: the second ``M x M x D`` product becomes a
      row times a matrix, and ``wᵀ A`` with its normaliser ``Σ w`` is an elementwise product
      summed by a fixed pairwise tree (:func:`~visprune.functional.text.padded_sum`).

    The queries differ from the published arrangement's by float32 rounding only (about
    3e-7 of the largest entry on random prompts); the published pooling vectors of
    ``tests/data`` hold to 1e-5.
    """
    b, m, d = rows.shape
    steps = torch.arange(m, dtype=torch.float32, device=rows.device)
    # An empty prompt counts as one zero row: its query is that row, zero, and no softmax sees a
    # row of -inf only.
    count = lengths.clamp_min(1).unsqueeze(-1)  # (b, 1)
    pad = steps >= count  # (b, M)
    unit = _halves(unit_rows(rows))  # (2b, M, D/2)
    affinity = torch.bmm(unit, unit.mT).view(b, 2, m, m).sum(1)
    affinity = affinity.masked_fill(pad.unsqueeze(1), -torch.inf)
    attention = torch.softmax(affinity, dim=-1)  # subtracts each row's maximum itself
    weights = torch.exp(3.0 * steps / (count - 1).clamp_min(1)).masked_fill(pad, 0.0)
    # One tree gives Σ_l w_l A_lj and the normaliser Σ_l w_l: the weights ride along as a column.
    sums = padded_sum(weights.unsqueeze(-1) * F.pad(attention, (0, 1), value=1.0))  # (b, M + 1)
    mixing = sums[:, :m] / sums[:, m:]  # (b, M): the normalised Σ_l w_l A_lj
    # q = mixing E, each half of D as its own item (a batch of 2b row-times-matrix products).
    mixing = mixing.unsqueeze(1).expand(b, 2, m).reshape(2 * b, 1, m)
    return torch.bmm(mixing, _halves(rows)).view(b, -1)[:, :d]


def _halves(x: Tensor) -> Tensor:
    """``(b, M, D) -> (2b, M, ceil(D / 2))``: each item's two halves of ``D`` as two items (an odd
    ``D`` gains a zero column, which adds exact zeros to every product)."""
    if x.shape[-1] % 2:
        x = F.pad(x, (0, 1))
    return x.unflatten(-1, (2, -1)).transpose(1, 2).flatten(0, 1)


def match_query_width(query: Tensor, width: int) -> Tensor:
    """Bring a query of length ``D`` to the vision width ``Cv`` without parameters.

    ``D > Cv`` and divisible: average contiguous groups of ``D / Cv``; ``D > Cv`` otherwise: 1-D
    adaptive average pooling; ``D < Cv``: tile and truncate; equal: unchanged.

    Parameters
    ----------
    query : Tensor
        ``(..., D)`` queries.
    width : int
        Target width ``Cv``.

    Returns
    -------
    Tensor
        ``(..., Cv)``.
    """
    size = query.shape[-1]
    if size == width:
        return query
    if size > width and size % width == 0:
        return query.unflatten(-1, (width, size // width)).mean(-1)
    if size > width:
        lead = query.shape[:-1]
        pooled = F.adaptive_avg_pool1d(query.reshape(-1, 1, size), width)
        return pooled.reshape(*lead, width)
    repeats = math.ceil(width / size)
    return query.repeat(*([1] * (query.dim() - 1)), repeats)[..., :width]
