"""Shared mechanics of every model adapter: locate visual tokens, select, shorten the sequence.

An adapter attaches to ONE model instance through forward pre-hooks and instance attributes (no
class is patched) and undoes all of it in :meth:`Adapter.remove`:

- ``get_image_features`` / ``get_video_features`` are wrapped on the instance to record how many
  tokens each image or video has, its frames and grid (and, for "vision"-stage methods, its
  pre-projector features). ``generate`` calls them before prefill and ``forward`` inside, so the
  record always precedes the language model.
- A pre-hook on the base model (``model.model``) records ``input_ids``; in decode steps without
  ``position_ids`` (manual loops) it supplies the positions the shortened cache needs.
- A pre-hook on the language model sees the final ``inputs_embeds``: at prefill it runs the
  method per image/frame, gathers the kept rows of embeddings, positions and mask (re-padding on
  the left when rows keep different counts), and stores what decode steps and the loss need.
- ``model.loss_function`` is overridden on the instance to drop the labels of removed positions.

Family files answer only family questions: which token ids are visual, how an encoder output
splits into images, frames and grids, and where the pre-projector features are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..methods import Context, Method

POSITION_MODES = ("compact", "original")


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


@dataclass
class Layout:
    """How one encoded image or video maps onto its placeholder tokens.

    ``count`` tokens in prompt order; ``frames`` lists ``(start, stop)`` token ranges that are
    selected separately (one range for an image); ``fixed`` marks tokens that are never candidates
    (always kept: LLaVA-NeXT newline tokens when excluded, the video newline of OneVision);
    ``vision`` holds pre-projector features ``(count - fixed.sum(), c)`` for "vision" methods.
    """

    count: int
    frames: list[tuple[int, int]]
    grid: tuple[int, int] | None = None
    fixed: Tensor | None = None
    vision: Tensor | None = None
    is_video: bool = False


@dataclass
class _Prefill:
    """State a prefill leaves for the decode steps and the loss."""

    length: int  # L, the unpruned length
    index: Tensor  # (B, L') positions into the unpruned sequence, -1 for re-padding
    mask: Tensor | None  # (B, L') compacted 2-D mask, when one is needed
    dropped: Tensor  # (B,) tokens removed per row
    shift: Tensor  # (B, 1) decode position = arange(q) + past + shift, for manual loops


@dataclass
class _Item:
    """One selection problem: an image or a video frame."""

    sample: int
    image: int
    frame: int | None
    kind: str
    positions: Tensor  # (n,) candidate positions in the sequence
    grid: tuple[int, int] | None
    vision: Tensor | None = None
    kept: Tensor | None = None


class Adapter:
    """Base class: one subclass per model family, registered by ``config.model_type``."""

    #: "compact" renumbers kept tokens; "original" keeps their positions. First = default.
    position_modes: ClassVar[tuple[str, ...]] = POSITION_MODES
    #: True for models with multimodal rotary positions computed from the full sequence (Qwen).
    mrope: ClassVar[bool] = False

    def __init__(
        self,
        model: Any,
        method: Method,
        *,
        positions: str | None = None,
        newlines: str = "candidates",
    ) -> None:
        positions = self.check_options(model.config.model_type, positions, newlines)
        self.model = model
        self.method = method
        self.positions = positions
        self.newlines = newlines
        self.base = model.model
        self.language_model = model.model.language_model
        self.selections: list[Selection] = []
        self._layouts: dict[str, list[Layout]] = {"image": [], "video": []}
        self._input_ids: Tensor | None = None
        self._state: _Prefill | None = None
        self._hooks: list[Any] = []
        self._wrapped: list[str] = []
        self._loss_overridden = False
        self._positions_supplied = False
        self._encoded = False
        self._prompt_cache: tuple[Tensor, list[Tensor]] | None = None
        self._captured_vision: list[Tensor] = []
        self._attach()

    @classmethod
    def check_options(cls, model_type: str, positions: str | None, newlines: str) -> str:
        """Validate the adapter options; return the position mode (the family default if None)."""
        if positions is None:
            positions = cls.position_modes[0]
        if positions not in cls.position_modes:
            raise ValueError(
                f"positions={positions!r} is not available for {model_type}; "
                f"choose one of {', '.join(cls.position_modes)}."
            )
        if newlines not in ("candidates", "keep"):
            raise ValueError(f"newlines must be 'candidates' or 'keep', got {newlines!r}.")
        return positions

    # ----------------------------------------------------------------------------- family API
    def token_ids(self) -> dict[str, int]:
        """Visual placeholder ids by kind: ``{"image": id, "video": id}``."""
        config = self.model.config
        ids = {"image": getattr(config, "image_token_id", None)}
        video = getattr(config, "video_token_id", None)
        if video is not None:
            ids["video"] = video
        return {kind: int(token) for kind, token in ids.items() if token is not None}

    def describe(self, kind: str, output: Any, args: tuple, kwargs: dict) -> list[Layout]:
        """Layouts of the images/videos that one ``get_{kind}_features`` call encoded."""
        raise NotImplementedError

    def vision_capture_module(self) -> torch.nn.Module | None:
        """The module whose input is the pre-projector features (``None``: none per token)."""
        return getattr(self.base, "multi_modal_projector", None)

    # --------------------------------------------------------------------------- attach/remove
    def _attach(self) -> None:
        for kind in self.token_ids():
            name = f"get_{kind}_features"
            if hasattr(self.base, name):
                setattr(self.base, name, self._wrap_encoder(kind, getattr(self.base, name)))
                self._wrapped.append(name)
        self._hooks.append(self.base.register_forward_pre_hook(self._before_base, with_kwargs=True))
        self._hooks.append(
            self.language_model.register_forward_pre_hook(
                self._before_language_model, with_kwargs=True
            )
        )
        original_loss = self.model.loss_function
        self._had_loss_override = "_loss_function" in self.model.__dict__

        def loss_function(logits, labels, vocab_size, **kwargs):
            return original_loss(
                logits=logits,
                labels=self.shorten_labels(labels, logits),
                vocab_size=vocab_size,
                **kwargs,
            )

        self._original_loss = original_loss
        self.model.loss_function = loss_function
        self._loss_overridden = True

    def remove(self) -> None:
        """Detach every hook and wrapper; the model behaves exactly as before. Idempotent."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for name in self._wrapped:
            self.base.__dict__.pop(name, None)
        self._wrapped.clear()
        if self._loss_overridden:
            if self._had_loss_override:
                self.model.loss_function = self._original_loss
            else:
                self.model.__dict__.pop("_loss_function", None)
            self._loss_overridden = False
        self._state = None

    # ---------------------------------------------------------------------------- recording
    def _wrap_encoder(self, kind: str, encode):
        @functools.wraps(encode)
        def recorded(*args, **kwargs):
            captured: list[Tensor] = []
            module = self.vision_capture_module() if self.method.stage == "vision" else None
            hook = None
            if module is not None:
                hook = module.register_forward_pre_hook(
                    lambda _m, inputs: captured.append(inputs[0].detach())
                )
            try:
                output = encode(*args, **kwargs)
            finally:
                if hook is not None:
                    hook.remove()
            self._captured_vision = captured
            self._layouts[kind] = self.describe(kind, output, args, kwargs)
            self._encoded = True
            return output

        return recorded

    def _before_base(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._input_ids = input_ids
        self._positions_supplied = False
        state = self._state
        if state is None or kwargs.get("position_ids") is not None or input_ids is None:
            return args, kwargs
        past = _cache_length(kwargs.get("past_key_values"))
        if past == 0:
            return args, kwargs
        # A decode step of a manual loop: continue from where the unpruned sequence would be.
        batch, steps = input_ids.shape
        position = (
            torch.arange(steps, device=input_ids.device) + past + state.shift.to(input_ids.device)
        )
        if self.mrope:
            deltas = getattr(self.base, "rope_deltas", None)
            position = position.unsqueeze(0).expand(3, batch, steps)
            if deltas is not None:
                position = position + deltas.to(position.device)
        kwargs["position_ids"] = position
        self._positions_supplied = True
        return args, kwargs

    # ------------------------------------------------------------------------------ prefill
    def _before_language_model(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return args, kwargs
        past = _cache_length(kwargs.get("past_key_values"))
        if past == 0:
            self._state = None
            self.selections = []
            input_ids = self._input_ids
            encoded, self._encoded = self._encoded, False
            if input_ids is None or input_ids.shape != embeds.shape[:2]:
                if encoded:
                    raise ValueError(
                        "visprune locates image tokens through input_ids; this call encoded "
                        "images but passed inputs_embeds instead. Pass input_ids (the processor "
                        "output) together with the pixel values."
                    )
                return args, kwargs
            visual = {kind: input_ids == token for kind, token in self.token_ids().items()}
            if not any(bool(mask.any()) for mask in visual.values()):
                return args, kwargs  # a prompt without images runs unpruned
            self._prefill(kwargs, embeds, input_ids, visual, continues=not encoded)
        elif self._state is not None:
            self._decode(kwargs, embeds, past)
        return args, kwargs

    def _prefill(
        self, kwargs: dict, embeds: Tensor, input_ids: Tensor, visual: dict, continues: bool
    ) -> None:
        batch, length, _ = embeds.shape
        mask = kwargs.get("attention_mask")
        if mask is not None and not (isinstance(mask, Tensor) and mask.dim() == 2):
            raise ValueError(
                "visprune needs a 2-D attention mask (or none); pre-built 4-D masks (static "
                "caches, cache_implementation='static') are not supported."
            )
        items = self._items(input_ids, visual)
        texts = None
        if self.method.uses:
            texts = self._texts_for_prefill(input_ids, embeds, mask, visual, continues)
        self._run_method(items, embeds, texts)
        keep = torch.ones(batch, length, dtype=torch.bool, device=embeds.device)
        for item in items:
            keep[item.sample, item.positions] = False
            keep[item.sample, item.positions[item.kept]] = True
        self.selections = [
            Selection(
                sample=item.sample,
                image=item.image,
                frame=item.frame,
                kept=item.kept.cpu(),
                n=len(item.positions),
                grid=item.grid,
                positions=item.positions[item.kept].cpu(),
                kind=item.kind,
                candidates=item.positions.cpu(),
            )
            for item in items
        ]
        if bool(keep.all()):
            self._state = None
            return
        self._shorten(kwargs, embeds, keep, mask)

    def _items(self, input_ids: Tensor, visual: dict) -> list[_Item]:
        items: list[_Item] = []
        for kind, is_visual in visual.items():
            layouts = self._layouts.get(kind, [])
            expected = int(is_visual.sum())
            if expected == 0:
                continue  # layouts of this kind belong to an earlier call
            if sum(layout.count for layout in layouts) != expected:
                raise ValueError(
                    f"the prompt has {expected} {kind} placeholder tokens but the {kind} encoder "
                    f"produced {sum(layout.count for layout in layouts)} features; check that the "
                    "processor expanded each placeholder for these pixel values."
                )
            queue = iter(layouts)
            vision_queue = iter(self._vision_per_layout(kind, layouts))
            for sample in range(input_ids.shape[0]):
                positions = is_visual[sample].nonzero().squeeze(-1)
                start = 0
                image = 0
                while start < len(positions):
                    layout = next(queue)
                    span = positions[start : start + layout.count]
                    vision = next(vision_queue)
                    candidates = torch.ones(layout.count, dtype=torch.bool, device=span.device)
                    if layout.fixed is not None:
                        candidates &= ~layout.fixed.to(span.device)
                    offset = 0
                    for frame, (low, high) in enumerate(layout.frames):
                        window = candidates[low:high]
                        frame_positions = span[low:high][window]
                        frame_vision = None
                        if vision is not None:
                            frame_vision = vision[offset : offset + len(frame_positions)]
                        offset += len(frame_positions)
                        items.append(
                            _Item(
                                sample=sample,
                                image=image,
                                frame=frame if layout.is_video else None,
                                kind=kind,
                                positions=frame_positions,
                                grid=layout.grid,
                                vision=frame_vision,
                            )
                        )
                    start += layout.count
                    image += 1
        # Batch order: by sample, then by place in the prompt (images and videos interleaved).
        items.sort(
            key=lambda item: (item.sample, int(item.positions[0]) if len(item.positions) else -1)
        )
        return items

    def _vision_per_layout(self, kind: str, layouts: list[Layout]) -> list[Tensor | None]:
        if self.method.stage != "vision" or self.vision_capture_module() is None:
            return [None] * len(layouts)
        features = [layout.vision for layout in layouts]
        if any(feature is None for feature in features):
            raise ValueError(
                f"{self.method.name} runs on vision features before the projector, which "
                f"{self.model.config.model_type} {kind} inputs do not provide here."
            )
        return features

    def _texts_for_prefill(
        self, input_ids: Tensor, embeds: Tensor, mask: Tensor | None, visual: dict, continues: bool
    ) -> list[Tensor]:
        """The prompt texts; a re-run prefill (``generate(use_cache=False)`` re-sends the prompt
        plus the tokens generated so far, without encoding again) keeps the first prompt's text,
        so generated tokens never change what the method selects."""
        previous = self._prompt_cache
        if continues and previous is not None:
            ids, texts = previous
            width = ids.shape[1]
            if input_ids.shape[1] > width and torch.equal(input_ids[:, :width], ids):
                return texts
        texts = self._prompt_texts(embeds, mask, visual)
        self._prompt_cache = (input_ids, texts)
        return texts

    def _run_method(self, items: list[_Item], embeds: Tensor, texts: list[Tensor] | None) -> None:
        groups: dict[tuple, list[_Item]] = {}
        for item in items:
            tokens = item.vision if item.vision is not None else embeds[item.sample, item.positions]
            item.vision = tokens
            groups.setdefault((tuple(tokens.shape), str(tokens.device)), []).append(item)
        for group in groups.values():
            tokens = torch.stack([item.vision for item in group])
            k = self.method.num_keep(tokens.shape[1])
            ctx = Context(text=[texts[item.sample] for item in group] if texts else None)
            keep = self.method.select(tokens, k, ctx)
            for item, row in zip(group, keep, strict=True):
                item.kept = row.to(item.positions.device)
                item.vision = None

    def _prompt_texts(self, embeds: Tensor, mask: Tensor | None, visual: dict) -> list[Tensor]:
        """Per sample: embeddings of the prompt tokens after its last visual token, unpadded."""
        any_visual = torch.zeros_like(next(iter(visual.values())))
        for is_visual in visual.values():
            any_visual |= is_visual
        texts = []
        for sample in range(embeds.shape[0]):
            last = int(any_visual[sample].nonzero().max()) if bool(any_visual[sample].any()) else -1
            tail = torch.arange(last + 1, embeds.shape[1], device=embeds.device)
            if mask is not None:
                tail = tail[mask[sample, tail].bool()]
            texts.append(embeds[sample, tail])
        return texts

    def _shorten(self, kwargs: dict, embeds: Tensor, keep: Tensor, mask: Tensor | None) -> None:
        batch, length, width = embeds.shape
        device = embeds.device
        counts = keep.sum(-1)
        longest = int(counts.max())
        # Left re-padding: rank of each kept token counted from the right end of the row.
        rank = keep.flip(-1).cumsum(-1).flip(-1)
        slot = longest - rank
        index = torch.full((batch, longest), -1, dtype=torch.long, device=device)
        rows, cols = keep.nonzero(as_tuple=True)
        index[rows, slot[rows, cols]] = cols
        padded = index < 0
        safe = index.clamp_min(0)
        dropped_before = (~keep).long().cumsum(-1)
        kwargs["inputs_embeds"] = embeds.gather(1, safe.unsqueeze(-1).expand(-1, -1, width))
        kwargs["inputs_embeds"] = kwargs["inputs_embeds"].masked_fill(padded.unsqueeze(-1), 0)

        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(length, device=device).expand(batch, length)
        gathered = positions.gather(-1, safe.expand(*positions.shape[:-2], batch, longest))
        if self.positions == "compact":
            gathered = gathered - dropped_before.gather(1, safe)
        kwargs["position_ids"] = gathered.masked_fill(padded, 1)

        new_mask = None
        if mask is not None:
            new_mask = mask.gather(1, safe).masked_fill(padded, 0)
        elif bool(padded.any()) or self.positions == "original":
            # Gapped positions without a mask would read as packed sequences: pass one.
            new_mask = (~padded).long()
        if new_mask is not None:
            kwargs["attention_mask"] = new_mask
        dropped = (~keep).sum(-1)
        shift = (length - longest) - (dropped if self.positions == "compact" else 0 * dropped)
        self._state = _Prefill(
            length=length, index=index, mask=new_mask, dropped=dropped, shift=shift.unsqueeze(-1)
        )

    # ------------------------------------------------------------------------------- decode
    def _decode(self, kwargs: dict, embeds: Tensor, past: int) -> None:
        state = self._state
        assert state is not None
        batch, steps, _ = embeds.shape
        longest = state.index.shape[1]
        mask = kwargs.get("attention_mask")
        if state.mask is not None:
            generated = past - longest + steps
            if mask is None:
                tail = state.mask.new_ones(batch, generated)
            elif isinstance(mask, Tensor) and mask.dim() == 2:
                tail = mask[:, -generated:] if generated else mask[:, :0]
            else:
                raise ValueError("visprune needs a 2-D attention mask (or none) in decode steps.")
            kwargs["attention_mask"] = torch.cat([state.mask, tail.to(state.mask)], dim=-1)
        elif isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[-1] != past + steps:
            kwargs["attention_mask"] = mask[:, -(past + steps) :]
        positions = kwargs.get("position_ids")
        if positions is not None and self.positions == "compact" and not self._positions_supplied:
            # generate continues the unpruned numbering; renumbered tokens continue lower.
            kwargs["position_ids"] = positions - state.dropped.to(positions.device).unsqueeze(-1)

    def shorten_labels(self, labels: Tensor | None, logits: Tensor) -> Tensor | None:
        """Drop the labels of removed positions so they line up with the shortened logits."""
        state = self._state
        if labels is None or state is None or labels.shape[-1] != state.length:
            return labels
        if logits.shape[-2] != state.index.shape[1]:
            return labels
        index = state.index.to(labels.device)
        return labels.gather(1, index.clamp_min(0)).masked_fill(index < 0, -100)


def encoder_features(output: Any, kind: str) -> list[Tensor]:
    """The per-image (or per-video) projected features of a ``get_{kind}_features`` call."""
    features = getattr(output, "pooler_output", None)
    if features is None:
        raise ValueError(
            f"get_{kind}_features returned {type(output).__name__} without pooler_output; "
            "visprune needs the model's default return_dict=True outputs."
        )
    return list(features)


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    length = cache.get_seq_length()
    return int(length)
