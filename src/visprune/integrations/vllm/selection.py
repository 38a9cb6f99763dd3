"""Run a method on the images of one encoder batch, as ``visprune.apply`` does in transformers.

Imports no vLLM code: the model classes hand in plain tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ...methods import Context
from .settings import ServingSettings


def select_rows(
    settings: ServingSettings,
    candidates: Sequence[Tensor],
    embeddings: Sequence[Tensor],
    texts: Sequence[Tensor] | None,
    scores: Sequence[dict[str, Tensor]] | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    fixed: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """The kept rows of each image's embeddings.

    Parameters
    ----------
    settings : ServingSettings
    candidates : sequence of Tensor
        Per image, ``(n_i, d_c)`` the tokens the method scores: the projector input for
        "vision"-stage methods, else the projected tokens.
    embeddings : sequence of Tensor
        Per image, ``(n_i, d)`` the language-model embeddings of its tokens (projector output).
    texts : sequence of Tensor, optional
        Per image, ``(m_i, d)`` embeddings of its prompt's tokens after the last image (for
        text-conditioned methods).
    scores : sequence of dict, optional
        Per image, the vision-tower scores of its candidates (methods that read them):
        ``cls_attention`` ``(H, n_i)``, ``vision_keys`` ``(n_i, hd)``, ``cls_state`` ``(d_c,)``.
    project : callable, optional
        Maps a merging method's new tokens ``(c, d_c)`` to embeddings ``(c, d)`` (the projector).
    fixed : sequence of Tensor, optional
        Per image, ``(N_i,)`` bool over its embeddings' rows: rows that are no candidates and
        always stay (LLaVA-NeXT's newline tokens); ``embeddings[i]`` then holds ``N_i`` rows, of
        which the ``n_i`` others are the candidates, in order.

    Returns
    -------
    list of Tensor
        Per image, ``(k_i, d)`` with ``k_i = settings.num_keep(n_i)``, rows in their original
        order; a merging method's new tokens take the places of the image's last dropped
        candidates, as ``visprune.apply`` places them. Images with equal shapes are selected in
        one batched call, as in transformers.
    """
    if len(candidates) != len(embeddings) or (texts is not None and len(texts) != len(candidates)):
        raise ValueError(
            f"visprune: {len(candidates)} candidate sets, {len(embeddings)} embeddings and "
            f"{'no' if texts is None else len(texts)} texts for one encoder batch."
        )
    kept: list[Tensor | None] = [None] * len(candidates)
    groups: dict[tuple, list[int]] = {}
    for number, tokens in enumerate(candidates):
        rows = embeddings[number].shape[0]
        if fixed is not None:
            rows -= int(fixed[number].sum())
        if tokens.shape[0] != rows:
            raise ValueError(
                f"visprune: image {number} has {tokens.shape[0]} candidates but {rows} "
                "candidate embeddings."
            )
        groups.setdefault((tuple(tokens.shape), str(tokens.device)), []).append(number)
    for members in groups.values():
        tokens = torch.stack([candidates[number] for number in members])
        k = settings.num_keep(tokens.shape[1])
        text = [texts[number] for number in members] if texts is not None else None
        ctx = Context(text=text, **_stacked(scores, members, tokens.device))
        if settings.method.merges:
            if project is None:
                raise ValueError(f"visprune: {settings.method.name} merges but has no projector.")
            keep, merged = settings.method.reduce(tokens, k, ctx)
            news = [project(new) for new in merged]
        else:
            keep = settings.method.select(tokens, k, ctx)
            news = [None] * len(members)
        for number, rows, new in zip(members, keep, news, strict=True):
            always = None if fixed is None else fixed[number]
            kept[number] = with_merged(embeddings[number], rows, new, always)
    return kept  # type: ignore[return-value]


def _stacked(scores, members: list[int], device) -> dict[str, Tensor]:
    """The group's scores as the batched ``Context`` takes them (``cls_attention`` heads first)."""
    if scores is None:
        return {}
    stacked = {
        name: torch.stack([scores[number][name] for number in members]).to(device)
        for name in ("cls_attention", "vision_keys", "cls_state")
    }
    stacked["cls_attention"] = stacked["cls_attention"].transpose(1, 2)
    return stacked


def with_merged(
    embeddings: Tensor, kept: Tensor, merged: Tensor | None = None, fixed: Tensor | None = None
) -> Tensor:
    """One image's staying rows: its fixed rows, its kept candidates, and a merging method's new
    tokens in the places of its last ``c`` dropped candidates (ascending), all in their original
    order, as ``visprune.apply`` places them.

    Parameters
    ----------
    embeddings : Tensor
        ``(N, d)`` the image's embeddings.
    kept : Tensor
        ``(m,)`` indices (among the candidates) of the candidates that stay.
    merged : Tensor, optional
        ``(c, d)`` the projected new tokens, ``m + c <= n``.
    fixed : Tensor, optional
        ``(N,)`` bool, rows that are no candidates and stay; default none (``n = N``).

    Returns
    -------
    Tensor
        ``(f + m + c, d)`` with ``f`` fixed rows.
    """
    device = embeddings.device
    if fixed is None and (merged is None or not merged.shape[0]):
        return embeddings[kept.to(device).sort().values]  # no boolean index: no host sync
    total = embeddings.shape[0]
    stays = torch.zeros(total, dtype=torch.bool, device=device)
    if fixed is None:
        positions = torch.arange(total, device=device)
    else:
        fixed = fixed.to(device)
        positions = (~fixed).nonzero().flatten()
        stays |= fixed
    chosen = torch.zeros(len(positions), dtype=torch.bool, device=device)
    chosen[kept.to(device)] = True
    stays[positions[chosen]] = True
    if merged is None or not merged.shape[0]:
        return embeddings[stays]
    slots = positions[~chosen]
    count = merged.shape[0]
    if count > len(slots):
        raise ValueError(
            f"visprune: {len(kept)} kept and {count} new tokens for an image of "
            f"{len(positions)} candidates."
        )
    slots = slots[len(slots) - count :]
    rows = embeddings.clone()
    rows[slots] = merged.to(rows.dtype)
    stays[slots] = True
    return rows[stays]


def select_in_parts(
    settings: ServingSettings,
    candidates: Sequence[Tensor],
    embeddings: Sequence[Tensor],
    texts: Sequence[Tensor] | None,
    parts: Sequence[int],
) -> list[Tensor]:
    """The kept rows of items made of parts that are each selected on their own, as
    ``visprune.apply`` selects them (Gemma 3's pan-and-scan crops, the frames of a video).

    Parameters
    ----------
    settings : ServingSettings
    candidates : sequence of Tensor
        Per part, in item order: ``(n_j, d_c)`` as in :func:`select_rows`.
    embeddings : sequence of Tensor
        Per part, in item order: ``(n_j, d)`` as in :func:`select_rows`.
    texts : sequence of Tensor, optional
        Per item, ``(m_i, d)`` its prompt text (every part of the item reads it).
    parts : sequence of int
        Number of parts of each item; they add up to ``len(candidates)``.

    Returns
    -------
    list of Tensor
        Per item, ``(sum_j k_j, d)``: its parts' kept rows, part after part.
    """
    if sum(parts) != len(candidates):
        raise ValueError(f"visprune: {len(candidates)} parts for items of {list(parts)} parts.")
    per_part = None
    if texts is not None:
        per_part = [text for text, count in zip(texts, parts, strict=True) for _ in range(count)]
    kept = select_rows(settings, candidates, embeddings, per_part)
    items, start = [], 0
    for count in parts:
        items.append(torch.cat(kept[start : start + count]))
        start += count
    return items
