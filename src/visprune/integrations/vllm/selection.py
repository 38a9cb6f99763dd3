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
        if tokens.shape[0] != embeddings[number].shape[0]:
            raise ValueError(
                f"visprune: image {number} has {tokens.shape[0]} candidates but "
                f"{embeddings[number].shape[0]} embeddings."
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
            for number, rows, new in zip(members, keep, merged, strict=True):
                kept[number] = with_merged(embeddings[number], rows, project(new))
            continue
        keep = settings.method.select(tokens, k, ctx)
        for number, rows in zip(members, keep, strict=True):
            kept[number] = embeddings[number][rows.to(embeddings[number].device)]
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


def with_merged(embeddings: Tensor, kept: Tensor, merged: Tensor) -> Tensor:
    """One image's kept rows with a merging method's new tokens in the places of its last
    ``c`` dropped candidates (ascending), all in their original order.

    Parameters
    ----------
    embeddings : Tensor
        ``(n, d)`` the image's embeddings.
    kept : Tensor
        ``(m,)`` indices of the candidates that stay.
    merged : Tensor
        ``(c, d)`` the projected new tokens, ``m + c <= n``.

    Returns
    -------
    Tensor
        ``(m + c, d)``.
    """
    kept = kept.to(embeddings.device)
    stays = torch.zeros(embeddings.shape[0], dtype=torch.bool, device=embeddings.device)
    stays[kept] = True
    slots = (~stays).nonzero().flatten()
    count = merged.shape[0]
    if count > len(slots):
        raise ValueError(
            f"visprune: {len(kept)} kept and {count} new tokens for an image of "
            f"{embeddings.shape[0]} candidates."
        )
    rows = embeddings.clone()
    if count:
        slots = slots[len(slots) - count :]
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
    candidates, embeddings : sequence of Tensor
        Per part, in item order: ``(n_j, d_c)`` and ``(n_j, d)`` as in :func:`select_rows`.
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
