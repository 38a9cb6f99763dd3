"""Slow float64 references of the selection methods, written from the method pages.

The references follow ``docs/methods/<name>.md`` step by step (explicit loops, full matrices,
``slogdet`` instead of incremental Cholesky) and share no code with the package; the
``tests/test_behaviour_*.py`` files hold each method's picks to them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _unit(x: Tensor) -> Tensor:
    norms = x.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, x / torch.where(norms > 0, norms, 1.0), 0.0)


def _argmax(scores: list[float], allowed: list[int]) -> int:
    """The lowest index with the largest score among ``allowed``."""
    best = max(scores[i] for i in allowed)
    return min(i for i in allowed if scores[i] == best)


def ref_divprune(x: Tensor, k: int) -> list[int]:
    x = x.double()
    n = x.shape[0]
    dist = 1 - _unit(x) @ _unit(x).T
    isolation = [sorted(dist[:, j].tolist())[1] for j in range(n)]
    picks = [_argmax(isolation, list(range(n)))]
    while len(picks) < k:
        rest = [j for j in range(n) if j not in picks]
        nearest = [min(float(dist[s, j]) for s in picks) if j in rest else 0.0 for j in range(n)]
        picks.append(_argmax(nearest, rest))
    return sorted(picks)


def ref_otprune(x: Tensor, k: int, gamma: float = 0.01) -> list[int]:
    x = x.double()
    n = x.shape[0]
    norms = x.norm(dim=0, keepdim=True)
    xt = torch.where(norms > 0, x / torch.where(norms > 0, norms, 1.0), 0.0)
    s = xt @ xt.T
    kernel = torch.eye(n, dtype=torch.float64) + gamma * s @ s.T
    picks: list[int] = []
    while len(picks) < k:
        rest = [j for j in range(n) if j not in picks]
        gains = [0.0] * n
        for j in rest:
            chosen = [*picks, j]
            sub = kernel[chosen][:, chosen]
            gains[j] = float(torch.linalg.slogdet(sub).logabsdet)
        picks.append(_argmax(gains, rest))
    return sorted(picks)


def ref_pool(text: Tensor) -> Tensor:
    rows = text.double()[-128:]
    length = rows.shape[0]
    if length == 0:
        return torch.zeros(text.shape[1], dtype=torch.float64)
    if length == 1:
        return rows[0]
    unit = _unit(rows)
    affinity = unit @ unit.T
    attention = torch.softmax(affinity - affinity.max(dim=1, keepdim=True).values, dim=1)
    context = attention @ rows
    weights = torch.tensor([math.exp(3 * i / (length - 1)) for i in range(length)])
    weights = weights.double() / weights.sum()
    return (weights[:, None] * context).sum(0)


def ref_match_width(q: Tensor, width: int) -> Tensor:
    size = q.shape[0]
    if size == width:
        return q
    if size > width and size % width == 0:
        group = size // width
        return torch.stack([q[i * group : (i + 1) * group].mean() for i in range(width)])
    if size > width:
        bins = []
        for i in range(width):
            start, end = (i * size) // width, -((-(i + 1) * size) // width)
            bins.append(q[start:end].mean())
        return torch.stack(bins)
    return torch.cat([q] * math.ceil(width / size))[:width]


def ref_rediprune(v: Tensor, text: Tensor, k: int, alpha: float = 0.5) -> list[int]:
    v = v.double()
    n, d = v.shape
    query = ref_match_width(ref_pool(text), d)
    rel = (_unit(v) @ _unit(query[None])[0]).tolist()
    dist = 1 - _unit(v) @ _unit(v).T
    picks = [_argmax(rel, list(range(n)))]
    while len(picks) < k:
        rest = [j for j in range(n) if j not in picks]
        score = [0.0] * n
        for j in rest:
            score[j] = min(float(dist[s, j]) for s in picks) + alpha * rel[j]
        picks.append(_argmax(score, rest))
    return sorted(picks)


def ref_resprune_weights(x: Tensor, text: Tensor | None, alpha: float) -> Tensor:
    n = x.shape[0]
    if text is None or text.shape[0] == 0 or alpha == 0:
        return torch.ones(n, dtype=torch.float64)
    mean = _unit(text.double()).mean(0)
    r = _unit(x.double()) @ _unit(mean[None])[0]
    if float(r.max() - r.min()) <= 0:
        return torch.ones(n, dtype=torch.float64)
    return ((r - r.min()) / (r.max() - r.min())) ** alpha


def ref_resprune(x: Tensor, k: int, text: Tensor | None = None, alpha: float = 0.5) -> list[int]:
    x = x.double()
    g = ref_resprune_weights(x, text, alpha)
    prior = g * (x * x).sum(-1)
    threshold = 1e-6 * float(prior.max())
    residual = x.clone()
    picks: list[int] = []
    exhausted = False
    while len(picks) < k:
        rest = [j for j in range(x.shape[0]) if j not in picks]
        scores = (g * (residual * residual).sum(-1)).tolist()
        best = _argmax(scores, rest)
        exhausted = exhausted or scores[best] <= threshold
        if exhausted:
            picks.append(_argmax(prior.tolist(), rest))
            continue
        u = residual[best] / residual[best].norm()
        residual = residual - (residual @ u)[:, None] * u[None]
        picks.append(best)
    return sorted(picks)


def ref_alignment(x: Tensor, text: Tensor) -> Tensor:
    xu, tu = _unit(x.double()), _unit(text.double())
    return -((xu[:, None, :] - tu[None, :, :]) ** 2).sum(-1).mean(1)


def ref_trimtokenator(x: Tensor, k: int, text: Tensor | None = None) -> list[int]:
    n = x.shape[0]
    if text is None or text.shape[0] == 0:
        aligned = list(range(n))
    else:
        a = ref_alignment(x, text)
        aligned = [i for i in range(n) if a[i] >= a.mean()]
        if len(aligned) < k:
            aligned = sorted(a.argsort(descending=True, stable=True)[:k].tolist())
    xu = _unit(x.double())
    dist = 1 - xu @ xu.T
    spread = [float(dist[i, aligned].sum()) for i in range(n)]
    picks = [_argmax(spread, aligned)]
    while len(picks) < k:
        rest = [i for i in aligned if i not in picks]
        total = [float(dist[i, picks].sum()) for i in range(n)]
        picks.append(_argmax(total, rest))
    return sorted(picks)


def ref_cdpruner(x: Tensor, e: Tensor, t: Tensor, k: int) -> list[int]:
    """Greedy log-det of ``L = diag(r) S diag(r)`` with ``slogdet`` (float64)."""
    x, e, t = x.double(), e.double(), t.double()
    n = x.shape[0]
    similarity = _unit(x) @ _unit(x).T
    r = -(_unit(e) @ _unit(t).T).mean(-1)
    r = (r - r.min() + 1e-6) / (r.max() - r.min())
    kernel = r[:, None] * similarity * r[None, :]
    chosen: list[int] = []
    for _ in range(k):
        gains = []
        for i in range(n):
            if i in chosen:
                gains.append(-math.inf)
                continue
            rows = [*chosen, i]
            sign, logdet = torch.linalg.slogdet(kernel[rows][:, rows])
            gains.append(logdet.item() if sign > 0 else -math.inf)
        chosen.append(_argmax(gains, [i for i in range(n) if i not in chosen]))
    return sorted(chosen)


def published_kept(a: list[int], ranked: list[int], size: int, drop: int) -> list[int] | None:
    """The a tokens the published round keeps: it indexes ``a``'s sorted tail with a batch
    index expanded to ``R // 2 - r`` and broadcasts the two (None where that raises)."""
    try:
        rows = torch.arange(1).unsqueeze(-1).expand(-1, size // 2 - drop)
        tail = torch.tensor(ranked[drop:], dtype=torch.long)[None]
        return torch.tensor(a)[None][rows, tail][0].tolist()
    except (RuntimeError, IndexError):
        return None


def ref_vispruner(x: Tensor, attention: Tensor, k: int, ratio: float) -> list[int]:
    """The published loop on Python lists (float64). A round keeps what the published round
    keeps, unless that raises or leaves fewer than k tokens: then the ``ceil(R / 2) - r`` a
    tokens it means to keep (at least enough for k)."""
    x = _unit(x.double())
    mean = attention.double().mean(0).tolist()
    order = sorted(range(len(mean)), key=lambda i: (-mean[i], i))
    important = int(k * ratio)
    diverse = k - important
    kept, residual = order[:important], order[important:]
    while diverse > 0 and len(residual) - diverse > 0:
        drop = min(8, len(residual) - diverse)
        a, b = residual[0::2], residual[1::2]
        scores = [max((x[i] @ x[j]).item() for j in b) for i in a]
        ranked = sorted(range(len(a)), key=lambda i: (-scores[i], i))
        kept_a = published_kept(a, ranked, len(residual), drop)
        if kept_a is None or len(kept_a) + len(b) < diverse:
            stay = max(len(a) - drop, diverse - len(b), 0)
            kept_a = [a[i] for i in ranked[drop : drop + stay]]
        residual = kept_a + b
    return sorted(kept + residual[:diverse])


def ref_visionzip(
    hidden: Tensor, attention: Tensor, keys: Tensor, cls: Tensor, k: int, ratio: float
):
    """The published merge with explicit loops (float64): kept patch indices and new tokens."""
    hidden, keys = hidden.double(), keys.double()
    contextual = min(round(k * ratio), k - 1)
    patches = k - contextual - 1
    summed = attention.double().sum(0).tolist()
    order = sorted(range(len(summed)), key=lambda i: (-summed[i], i))
    kept = sorted(order[:patches])
    remaining = [i for i in range(len(summed)) if i not in kept]
    step = max(1, len(remaining) // contextual) if contextual else 1
    targets = list(range(0, len(remaining), step))[:contextual]
    members: dict[int, list[int]] = {t: [] for t in targets}
    unit = _unit(keys)
    for position, token in enumerate(remaining):
        if position in members or not targets:
            continue
        sims = [(unit[token] @ unit[remaining[t]]).item() for t in targets]
        members[targets[_argmax(sims, list(range(len(targets))))]].append(token)
    merged = [cls.double()]
    for t in targets:
        group = members[t]
        mean = hidden[group].mean(0) if group else torch.zeros_like(hidden[0])
        merged.append(hidden[remaining[t]] + mean)
    return kept, torch.stack(merged)


PROBLEMS = [(30, 12, 8, 0), (30, 12, 8, 1), (60, 24, 10, 2), (45, 6, 12, 3), (20, 40, 5, 4)]


PROBLEM_IDS = [f"n{n}-d{d}-k{k}-s{s}" for n, d, k, s in PROBLEMS]
