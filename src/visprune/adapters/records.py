"""The records an adapter keeps: what was kept (Selection), how encoder output maps onto
placeholder tokens (Layout), one selection problem (Item), and the per-call state (CallState).

Per-call state lives in a ``threading.local`` of the adapter, so one pruned model serves several
threads at once: each thread's ``generate`` sees only its own encoder outputs, prompt and cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Selection:
    """What was kept of one image (or one video frame) in the last call.

    Attributes
    ----------
    sample : int
        Batch row.
    image : int
        Index of the image (or video) within the sample, in prompt order, counted per kind.
    frame : int or None
        Frame index for video, else None.
    kept : Tensor
        int64 indices into this image's/frame's candidate tokens, ascending.
    n : int
        Number of candidate tokens.
    grid : tuple of int or None
        (h, w) in tokens when the candidates form one grid, else None.
    positions : Tensor
        int64 positions, in the unpruned ``input_ids``, of the kept tokens.
    kind : str
        "image" or "video".
    candidates : Tensor
        int64 positions, in the unpruned ``input_ids``, of all ``n`` candidate tokens
        (``positions == candidates[kept]``).
    merged_positions : Tensor or None
        Merging methods (VisionZip): int64 positions, in the unpruned ``input_ids``, of the
        dropped candidates whose slots carry the new tokens, in the method's order (the last
        ``c`` dropped candidates of the image); else None. ``len(kept) + c`` is the budget.
    merged : Tensor or None
        The new tokens ``(c, d)`` as the language model received them (projected), on the CPU.
    layer : int or None
        For methods that prune inside the language model: the decoder layer from which on only
        the ``kept`` tokens are seen (``None``: the language model never saw the others).
    stages : tuple of (int, Tensor)
        Layer-stage methods: per pruning, its layer and the kept indices into the candidates
        (PyramidDrop prunes several times; the last entry equals ``layer`` and ``kept``).
    """

    sample: int
    image: int
    frame: int | None
    kept: Tensor
    n: int
    grid: tuple[int, int] | None
    positions: Tensor
    kind: str = "image"
    candidates: Tensor | None = None
    merged_positions: Tensor | None = None
    merged: Tensor | None = None
    layer: int | None = None
    stages: tuple[tuple[int, Tensor], ...] = ()


@dataclass
class Layout:
    """How one encoded image or video maps onto its placeholder tokens.

    ``count`` tokens in prompt order; ``frames`` lists ``(start, stop)`` token ranges that are
    selected separately (one range for an image); ``fixed`` marks tokens that are never candidates
    (always kept: LLaVA-NeXT newline tokens when excluded, the video newline of OneVision);
    ``vision`` holds pre-projector features ``(count - fixed.sum(), c)`` for "vision" methods.

    ``tile`` marks one tile of an image whose encoder output does not say which tiles belong
    together (InternVL): the consecutive tile layouts that fill one contiguous run of placeholder
    tokens form one image, selected as a whole (:func:`spans.join_tiles`).
    """

    count: int
    frames: list[tuple[int, int]]
    grid: tuple[int, int] | None = None
    fixed: Tensor | None = None
    vision: Tensor | None = None
    is_video: bool = False
    tile: bool = False
    #: Vision-tower scores per candidate token (``cls_attention`` ``(n, H)``, ``vision_keys``
    #: ``(n, hd)``) and ``cls_state`` ``(D,)``, for methods that need them (one frame only).
    scores: dict[str, Tensor] | None = None


@dataclass
class Item:
    """One selection problem: an image or a video frame."""

    sample: int
    image: int
    frame: int | None
    kind: str
    positions: Tensor  # (n,) candidate positions in the sequence
    grid: tuple[int, int] | None
    vision: Tensor | None = None
    kept: Tensor | None = None
    scores: dict[str, Tensor] | None = None
    #: New tokens of a merging method: ``(c, d)`` in the method's space, then projected.
    merged: Tensor | None = None
    #: Positions of the slots that carry them.
    merged_positions: Tensor | None = None

    def keeps_all(self) -> bool:
        """Whether every candidate stays (kept, or the slot of a new token), from the shapes
        alone (no read of the device)."""
        slots = 0 if self.merged_positions is None else len(self.merged_positions)
        return len(self.kept) + slots == len(self.positions)


@dataclass
class Prefill:
    """State a pruned prefill leaves for the decode steps and the loss."""

    length: int  # L, the unpruned length
    index: Tensor  # (B, L') kept real positions of the unpruned sequence, -1 for re-padding
    mask: Tensor | None  # (B, L') compacted 2-D mask, when one is needed
    dropped: Tensor  # (B,) tokens the method removed per row (left-out padding not counted)
    shift: Tensor  # (B, 1) manual loops decode at arange(q) + past + shift (M-RoPE: not used)


@dataclass
class CallState:
    """What one thread's calls on the model leave for the next hook of the same call."""

    #: Layouts of the last encoder call per kind.
    layouts: dict[str, list[Layout]] = field(default_factory=lambda: {"image": [], "video": []})
    #: Weak references to the last encoder output per kind (5.24+ hands them back as
    #: ``mm_encoder_outputs``); weak, so the features are not kept alive after the call. A
    #: forward uses a kind's layouts only when it hands back this very output, or when the
    #: encoder ran inside that forward: nothing one call encoded ever reaches another.
    recorded: dict[str, Any] = field(default_factory=dict)
    #: Pre-projector features captured during the last encoder call.
    captured_vision: list[Tensor] = field(default_factory=list)
    #: Vision-tower scores captured during the last encoder call (``vision_scores``).
    captured_scores: list[dict[str, Tensor]] = field(default_factory=list)
    #: Inside an encoder call (the capture hook records only then).
    capturing: bool = False
    #: Kinds encoded since the last prefill (a prefill without them re-runs an earlier one).
    fresh: set[str] = field(default_factory=set)
    #: The current base-model forward. Kinds it carries (pixels or encoder outputs), kinds
    #: encoded inside it, kinds whose encoder outputs it carries are ones visprune recorded,
    #: kinds whose placeholder ids it holds; its input_ids (placeholder ids found from the
    #: embeddings when it got ``inputs_embeds``, -1 elsewhere), and whether the language
    #: model's prefill reached visprune.
    brought: set[str] = field(default_factory=set)
    encoded: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    placeholders: set[str] = field(default_factory=set)
    input_ids: Tensor | None = None
    ids_from_embeds: bool = False
    #: Its ``token_type_ids`` (Gemma 3 builds its attention masks from them).
    token_types: Tensor | None = None
    expects_prefill: bool = False
    prefill_seen: bool = False
    positions_supplied: bool = False
    #: The pruned prefill's state for decode steps and the loss.
    prefill: Prefill | None = None
    #: M-RoPE: per row, the position that follows the unpruned prompt ``(B,)``, where a manual
    #: loop's decode steps continue (``sequence.decode_positions``).
    next_position: Tensor | None = None
    #: A layer-stage method's pruning in progress inside the language model's prefill.
    layer_plan: Any = None
    #: The first prompt of a generate(use_cache=False) run and its texts.
    prompt_cache: tuple[Tensor, list[Tensor]] | None = None
    selections: list[Selection] = field(default_factory=list)

    def known_kinds(self, outputs: dict[str, Any]) -> set[str]:
        """The kinds whose given encoder output is the one visprune recorded last."""

        def known(kind: str, output: Any) -> bool:
            ref = self.recorded.get(kind)
            return ref is not None and ref() is output

        return {kind for kind, output in outputs.items() if known(kind, output)}
