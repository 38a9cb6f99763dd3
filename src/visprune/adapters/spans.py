"""Locate the selection problems of a prefill: which placeholder tokens belong to which encoded
image, video and frame, and the prompt text each sample's method reads.

Visual spans come from ``input_ids == token_id`` per sample (never a fixed offset). The encoder
outputs (``Layout``) are consumed in prompt order, row by row. When generation expanded the rows
(beam search, ``num_return_sequences``) after the images were encoded once, each expanded row
takes the layouts of its source row. Encoders that return tiles without saying which image
they belong to (InternVL) mark them ``Layout.tile``; each contiguous run of placeholders then
joins its tiles into one image (:func:`join_tiles`).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .records import Item, Layout


def expand_layouts(layouts: list[Layout], counts: list[int], kind: str) -> list[Layout]:
    """Layouts in row order for rows whose placeholder counts are ``counts``.

    ``layouts`` either cover the rows exactly, or cover every ``copies``-th row once, with the
    rows expanded ``copies`` times each (``repeat_interleave``, as generation expands inputs).

    Raises
    ------
    ValueError
        When neither holds, or an image would straddle two rows.
    """
    produced = sum(layout.count for layout in layouts)
    expected = sum(counts)
    copies = expected // produced if produced and expected % produced == 0 else 0
    rows = len(counts)
    if (
        copies > 1
        and rows % copies == 0
        and all(counts[row] == counts[row - row % copies] for row in range(rows))
    ):
        sources = [counts[row] for row in range(0, rows, copies)]
        groups = _split_by_rows(layouts, sources, kind)
        return [layout for group in groups for _ in range(copies) for layout in group]
    if produced != expected:
        raise ValueError(
            f"the prompt has {expected} {kind} placeholder tokens but the {kind} encoder produced "
            f"{produced} features; check that the processor expanded each placeholder for these "
            "pixel values (and that the prompt is not prefilled in chunks)."
        )
    return [layout for group in _split_by_rows(layouts, counts, kind) for layout in group]


def _split_by_rows(layouts: list[Layout], counts: list[int], kind: str) -> list[list[Layout]]:
    groups: list[list[Layout]] = []
    queue = iter(layouts)
    for row, count in enumerate(counts):
        group, filled = [], 0
        while filled < count:
            layout = next(queue, None)
            if layout is None or filled + layout.count > count:
                raise ValueError(
                    f"batch row {row} has {count} {kind} placeholder tokens, which do not add up "
                    f"to whole {kind}s of the encoder output (each {kind} has its own count of "
                    "tokens, in prompt order across rows); build input_ids and pixel values with "
                    "the model's processor, one row per prompt."
                )
            group.append(layout)
            filled += layout.count
        groups.append(group)
    return groups


def locate_items(
    input_ids: Tensor,
    visual: dict[str, Tensor],
    layouts: dict[str, list[Layout]],
    vision: dict[str, list[Tensor | None]],
) -> list[Item]:
    """One :class:`Item` per image (per video frame), ordered by sample then prompt position.

    Parameters
    ----------
    input_ids : Tensor
        ``(B, L)`` the unpruned prompt.
    visual : dict of str to Tensor
        ``(B, L)`` bool placeholder mask per kind.
    layouts : dict of str to list of Layout
        The encoder's layouts per kind, in prompt order.
    vision : dict of str to list
        Pre-projector features per layout (``None`` entries when the method needs none).
    """
    items: list[Item] = []
    # One read of the device for the whole batch: every row's placeholder count per kind.
    kinds = list(visual)
    all_counts = torch.stack([visual[kind].sum(-1) for kind in kinds]).tolist()
    with_items = 0
    for kind, counts in zip(kinds, all_counts, strict=True):
        if sum(counts) == 0:
            continue  # layouts of this kind belong to an earlier call
        with_items += 1
        is_visual = visual[kind]
        features = dict(zip(map(id, layouts[kind]), vision[kind], strict=True))
        ordered = expand_layouts(layouts[kind], counts, kind)
        queue = iter(ordered)
        rows = row_positions(is_visual, counts)
        host_rows = None  # the positions on the host, read once if tiles need their runs
        for sample, positions in enumerate(rows):
            start = image = 0
            while start < counts[sample]:
                layout = next(queue)
                features_of_layout = features[id(layout)]
                if layout.tile:
                    if host_rows is None:
                        flat = torch.cat(rows).tolist()
                        host_rows = _split_list(flat, counts)
                    length = _run_length(host_rows[sample], start)
                    layout, features_of_layout = join_tiles(
                        layout, queue, features, length, sample, kind
                    )
                items.extend(
                    _frame_items(layout, features_of_layout, positions, start, sample, image, kind)
                )
                start += layout.count
                image += 1
    if with_items > 1 or any(len(item.positions) == 0 for item in items):
        # Items are in prompt order within a kind; several kinds interleave by position.
        present = [item for item in items if len(item.positions)]
        firsts = torch.stack([item.positions[0] for item in present]).tolist() if present else []
        first = dict(zip(map(id, present), firsts, strict=True))
        items.sort(key=lambda item: (item.sample, first.get(id(item), -1)))
    return items


def row_positions(is_visual: Tensor, counts: list[int]) -> list[Tensor]:
    """Per row, the positions of its placeholder tokens, ascending: ``(B, L) -> [(count_r,)]``.

    ``counts`` are the rows' placeholder counts (read once by the caller); a stable sort puts
    each row's placeholders first, in order, so no per-row read of the device is needed.
    """
    order = (~is_visual).to(torch.uint8).sort(dim=-1, stable=True).indices
    return [order[row, :count] for row, count in enumerate(counts)]


def _split_list(values: list[int], counts: list[int]) -> list[list[int]]:
    rows, start = [], 0
    for count in counts:
        rows.append(values[start : start + count])
        start += count
    return rows


def _run_length(positions: list[int], start: int) -> int:
    """Placeholder tokens in the contiguous run that begins at ``positions[start]``."""
    length = 1
    while start + length < len(positions) and positions[start + length] == (
        positions[start + length - 1] + 1
    ):
        length += 1
    return length


def join_tiles(
    first: Layout,
    rest,
    features: dict[int, Tensor | None],
    length: int,
    sample: int,
    kind: str,
) -> tuple[Layout, Tensor | None]:
    """One image from ``first`` and the next tile layouts of ``rest`` that fill its run.

    An image's tiles are contiguous placeholder tokens, and images are separated by other tokens
    (InternVL's ``<img>`` / ``</img>``), so the run of ``length`` placeholders that begins at the
    first tile is one image. Its candidates are all its tiles' tokens, one selection problem.

    Parameters
    ----------
    first : Layout
        The image's first tile (``tile=True``).
    rest : iterator of Layout
        The layouts after it, in prompt order; the image's other tiles are consumed from it.
    features : dict
        Pre-projector features ``(count, c)`` (or ``None``) by ``id`` of each tile layout.
    length : int
        Placeholder tokens in the run.
    sample : int
        Batch row (for the error message).
    kind : str
        "image" or "video".

    Returns
    -------
    tuple of Layout and Tensor or None
        The image's layout and its pre-projector features ``(length, c)`` (tiles concatenated).

    Raises
    ------
    ValueError
        When the run does not hold whole tiles.
    """
    tiles, filled = [first], first.count
    while filled < length:
        tile = next(rest, None)
        if tile is None or not tile.tile:
            break
        tiles.append(tile)
        filled += tile.count
    if filled != length:
        raise ValueError(
            f"batch row {sample} has a run of {length} {kind} placeholder tokens (one {kind} "
            f"between its start and end tokens) that does not hold whole tiles of the encoder "
            f"output ({first.count} tokens each, in prompt order across rows); build input_ids "
            "and pixel values with the model's processor, one row per prompt."
        )
    fixed = None
    if any(tile.fixed is not None for tile in tiles):
        fixed = torch.cat([_fixed_of(tile) for tile in tiles])
    parts = [features[id(tile)] for tile in tiles]
    vision = torch.cat(parts) if all(part is not None for part in parts) else None
    grid = first.grid if len(tiles) == 1 else None  # several tiles form no single grid
    image = Layout(count=filled, frames=[(0, filled)], grid=grid, fixed=fixed, vision=vision)
    return image, vision


def _fixed_of(tile: Layout) -> Tensor:
    """A tile's always-kept mask on the CPU (all False when it has none)."""
    if tile.fixed is None:
        return torch.zeros(tile.count, dtype=torch.bool)
    return tile.fixed.cpu()


def _frame_items(layout, vision, positions, start, sample, image, kind) -> list[Item]:
    span = positions[start : start + layout.count]
    # Tokens that are never candidates; a boolean index reads the device, so only with them.
    candidates = None if layout.fixed is None else ~layout.fixed.to(span.device)
    items, offset = [], 0
    for frame, (low, high) in enumerate(layout.frames):
        frame_positions = span[low:high]
        if candidates is not None:
            frame_positions = frame_positions[candidates[low:high]]
        frame_vision = None
        if vision is not None:
            frame_vision = vision[offset : offset + len(frame_positions)]
        offset += len(frame_positions)
        items.append(
            Item(
                sample=sample,
                image=image,
                frame=frame if layout.is_video else None,
                kind=kind,
                positions=frame_positions,
                grid=layout.grid,
                vision=frame_vision,
                scores=layout.scores if len(layout.frames) == 1 else None,
            )
        )
    return items


def prompt_texts(embeds: Tensor, mask: Tensor | None, visual: dict[str, Tensor]) -> list[Tensor]:
    """Per sample: embeddings of the prompt tokens after its last visual token, unpadded.

    ``embeds`` is ``(B, L, d)``; padding (``mask == 0``) is left out wherever it sits, so left-
    and right-padded rows read the same text as alone. A row with no text after its visual
    tokens gets an empty ``(0, d)`` tensor and a warning (once: Python's default warning
    filter), since the text-conditioned method then selects without the prompt.
    """
    tails = tail_positions(visual, mask)
    texts = [embeds[sample, tail.to(embeds.device)] for sample, tail in enumerate(tails)]
    if any(text.shape[0] == 0 for text in texts):
        warnings.warn(EMPTY_PROMPT_TAIL, UserWarning, stacklevel=2)
    return texts


def tail_positions(visual: dict[str, Tensor], mask: Tensor | None) -> list[Tensor]:
    """Per row, the positions after its last visual token, padding (``mask == 0``) left out.

    ``visual`` holds ``(B, L)`` bool placeholder masks; a row without any visual token gets
    all its positions. One read of the device for the batch (each row's count): a stable sort
    puts each row's tail positions first, in order.
    """
    any_visual = torch.zeros_like(next(iter(visual.values())))
    for is_visual in visual.values():
        any_visual |= is_visual
    columns = torch.arange(any_visual.shape[1], device=any_visual.device)
    last = torch.where(any_visual, columns, -1).amax(-1, keepdim=True)  # -1: no visual token
    in_tail = columns > last
    if mask is not None:
        in_tail &= mask.to(in_tail.device).bool()
    counts = in_tail.sum(-1).tolist()
    order = (~in_tail).to(torch.uint8).sort(dim=-1, stable=True).indices
    return [order[row, :count] for row, count in enumerate(counts)]


#: The warning for a prompt whose text all comes before its images.
EMPTY_PROMPT_TAIL = (
    "visprune: a prompt has no text after its last image or video, where text-conditioned "
    "methods read the prompt; the method selects with empty text relevance (as with no "
    "prompt at all). Put the question after the image (or also after it) for the method to "
    "use it."
)
