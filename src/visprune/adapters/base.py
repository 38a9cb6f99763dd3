"""The adapter: the hooks that connect a model to a method, and the checks that it pruned.

An adapter attaches to ONE model instance through forward hooks and instance attributes (no
class is patched) and undoes all of it in :meth:`Adapter.remove`:

- ``get_image_features`` / ``get_video_features`` of the base model are wrapped on the instance
  to record how many tokens each image or video has, its frames and grid (and, for "vision"-stage
  methods, its pre-projector features). Every transformers release routes encoding through them:
  ``forward`` calls them (up to 5.23) or ``generate`` does once before prefill (5.24+).
- A pre-hook on the base model (``model.model``) records ``input_ids`` (or, for
  ``inputs_embeds``, where the placeholder embeddings sit) and which kinds the call carries
  (pixels or encoder outputs); in decode steps without ``position_ids`` (manual loops) it
  supplies the positions the shortened cache needs. Its post-hook checks that a prefill over
  image tokens reached the language model through visprune.
- A pre-hook on the language model sees the final ``inputs_embeds``: at prefill it runs the
  method per image/frame and shortens the sequence (``sequence.shorten``); decode steps get a
  mask and positions that fit the shortened cache.
- ``model.loss_function`` is overridden on the instance to drop the labels of removed positions.

The invariant, checked on every call: when a call encodes images or video and its prefill runs
over their placeholder tokens, either they were pruned (selections recorded, the shortened
sequence handed on) or visprune raises. A call (or a decode step) that carries no pixels and no
encoder output encodes nothing: its placeholder ids, if any, are text, and it runs exactly as the
unpatched model runs it. A kind's records serve only the forward that encoded it or that hands
its very encoder output back, so per-call state never leaks from one call into another.
Whatever it reads from transformers internals goes through
:mod:`visprune.compat`. Per-call state is per thread (:class:`records.CallState`).

Family files answer only family questions: which token ids are visual, how an encoder output
splits into images, frames and grids, and where the pre-projector features are.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import compat
from ..compat import PruningNotApplied, encoder_features
from ..methods import Method
from . import sequence
from .layers import LayerPruner, layer_positions
from .needs import check_item_scores, check_method
from .records import CallState, Layout, Selection
from .selection import keep_mask, place_merged, run_method, selections_of
from .spans import locate_items, prompt_texts
from .vision_scores import ScoreCapture, ScoreLayer

POSITION_MODES = ("compact", "original")

__all__ = ["POSITION_MODES", "Adapter", "Layout", "Selection", "encoder_features"]


class Adapter:
    """Base class: one subclass per model family, registered by ``config.model_type``."""

    #: "compact" renumbers kept tokens; "original" keeps their positions. First = default.
    position_modes: ClassVar[tuple[str, ...]] = POSITION_MODES
    #: True for models with multimodal rotary positions computed from the full sequence (Qwen).
    mrope: ClassVar[bool] = False
    #: Names of the model classes the adapter prunes (subclasses of them included): those
    #: whose language-model head and token-level loss it shortens with the sequence.
    model_classes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        model: Any,
        method: Method,
        *,
        positions: str | None = None,
        newlines: str = "candidates",
        compile: bool | str = False,
    ) -> None:
        if method.stage == "layer":
            positions = layer_positions(model.config.model_type, positions)
        positions = self.check_options(model.config.model_type, positions, newlines)
        check_method(type(self), model, method)
        self.model = model
        self.method = method
        self.positions = positions
        self.newlines = newlines
        #: Passed on to ``Method.select`` (``visprune.apply(..., compile=...)``).
        self.compile = compile
        self.base = model.model
        self.language_model = model.model.language_model
        self._local = threading.local()
        self._last_selections: list[Selection] = []
        self._hooks: list[Any] = []
        self._captures: list[ScoreCapture] = []
        self._wrapped: list[str] = []
        self._loss_overridden = False
        self.layer_pruner: LayerPruner | None = None
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

    @classmethod
    def supports_class(cls, model: Any) -> bool:
        """Whether ``model`` is (a subclass of) one of :attr:`model_classes`."""
        return any(klass.__name__ in cls.model_classes for klass in type(model).__mro__)

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

    @classmethod
    def score_layer(cls, model: Any) -> ScoreLayer | None:
        """The vision encoder layer (of a tower with a CLS token) that scores the projector
        input, for methods that need CLS attention (``vision_scores``); ``None``: none."""
        return None

    def project_vision(self, tokens: Tensor) -> Tensor:
        """New pre-projector tokens ``(c, d_vision)`` (a merging method's) projected as the
        model projects its image features: ``(c, d)``."""
        projector = self.base.multi_modal_projector
        weight = next(projector.parameters())
        return projector(tokens.to(weight.dtype).to(weight.device))

    def vision_capture_module(self) -> torch.nn.Module | None:
        """The module whose input is the pre-projector features (``None``: none per token)."""
        return getattr(self.base, "multi_modal_projector", None)

    def check_layer_stage(self, layers: list[int]) -> None:
        """Raise ``ValueError`` when the family cannot prune inside its language model before
        these decoder layers (nothing by default)."""

    def shorten_family_inputs(self, kwargs: dict, keep: Tensor, index: Tensor) -> None:
        """Shorten the family's own per-token language-model inputs at a pruned prefill.

        ``keep`` is the ``(B, L)`` mask of kept positions, ``index`` the ``(B, L')`` positions
        into the unpruned sequence (-1 for re-padding); ``kwargs`` already holds the shortened
        embeddings, positions and 2-D mask. Nothing by default.
        """

    # ------------------------------------------------------------------------ per-call state
    def _call(self) -> CallState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = CallState()
        return state

    @property
    def _captured_vision(self) -> list[Tensor]:
        """Pre-projector features captured in this thread's last encoder call."""
        return self._call().captured_vision

    @property
    def selections(self) -> list[Selection]:
        """This thread's last call's selections; in a thread that made no call, the last
        selections of any thread."""
        state = getattr(self._local, "state", None)
        return state.selections if state is not None else self._last_selections

    # --------------------------------------------------------------------------- attach/remove
    def _attach(self) -> None:
        if self.method.stage == "layer":  # first: it checks the decoder layers, touches nothing
            self.layer_pruner = LayerPruner(self)
        for kind in self.token_ids():
            name = f"get_{kind}_features"
            if hasattr(self.base, name):
                setattr(self.base, name, self._wrap_encoder(kind, getattr(self.base, name)))
                self._wrapped.append(name)
        capture = self.vision_capture_module() if self.method.stage == "vision" else None
        if capture is not None:
            self._hooks.append(capture.register_forward_pre_hook(self._capture_vision))
        if self.method.uses & {"cls_attention", "vision_keys", "cls_state"}:
            layer = self.score_layer(self.model)
            if layer is not None:
                self._captures.append(
                    ScoreCapture(
                        layer,
                        active=lambda: self._call().capturing,
                        record=lambda scores: self._call().captured_scores.append(scores),
                    )
                )
        self._hooks.append(self.base.register_forward_pre_hook(self._before_base, with_kwargs=True))
        self._hooks.append(self.base.register_forward_hook(self._after_base))
        self._hooks.append(
            self.language_model.register_forward_pre_hook(
                self._before_language_model, with_kwargs=True
            )
        )
        original_loss = self.model.loss_function
        self._had_loss_override = "_loss_function" in self.model.__dict__

        def loss_function(logits, labels, vocab_size, **kwargs):
            state = self._call().prefill
            return original_loss(
                logits=logits,
                labels=sequence.shorten_labels(labels, logits, state),
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
        for capture in self._captures:
            capture.remove()
        self._captures.clear()
        if self.layer_pruner is not None:
            self.layer_pruner.remove()
            self.layer_pruner = None
        for name in self._wrapped:
            self.base.__dict__.pop(name, None)
        self._wrapped.clear()
        if self._loss_overridden:
            if self._had_loss_override:
                self.model.loss_function = self._original_loss
            else:
                self.model.__dict__.pop("_loss_function", None)
            self._loss_overridden = False
        self._local = threading.local()

    # ---------------------------------------------------------------------------- recording
    def _wrap_encoder(self, kind: str, encode):
        @functools.wraps(encode)
        def recorded(*args, **kwargs):
            call = self._call()
            call.captured_vision = []
            call.captured_scores = []
            call.capturing = True
            call.layouts[kind] = []
            call.recorded.pop(kind, None)
            try:
                output = encode(*args, **kwargs)
            finally:
                call.capturing = False
            if not compat.has_encoder_features(output):
                # return_dict=False: no forward reads this, so it is passed on unrecorded; a
                # forward that encoded this way finds its kind unrecorded and raises.
                return output
            call.layouts[kind] = self.describe(kind, output, args, kwargs)
            call.recorded[kind] = weakref.ref(output)
            call.encoded.add(kind)
            call.fresh.add(kind)
            return output

        return recorded

    def _capture_vision(self, module, inputs) -> None:
        # One hook for every thread: each keeps the features of its own encoder call.
        call = self._call()
        if call.capturing:
            call.captured_vision.append(inputs[0].detach())

    def _before_base(self, module, args, kwargs):
        call = self._call()
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        past = compat.cache_length(compat.find_cache(kwargs))
        call.brought = compat.kinds_in_call(kwargs)
        call.encoded = set()  # this forward's own encoder calls add to it
        call.known = call.known_kinds(compat.encoder_outputs(kwargs))
        call.ids_from_embeds = False
        embeds = kwargs.get("inputs_embeds")
        if input_ids is None and call.brought and isinstance(embeds, Tensor):
            # As transformers does without input_ids: placeholders are the embeddings equal
            # to a placeholder token's embedding.
            input_ids = compat.placeholder_ids_from_embeds(self.base, embeds, self.token_ids())
            call.ids_from_embeds = True
        call.input_ids = input_ids
        call.token_types = compat.token_types(kwargs)
        call.positions_supplied = False
        call.prefill_seen = False
        call.placeholders = self._placeholder_kinds(input_ids, call.brought)
        # A call that carries no pixels and no encoder output encodes nothing: its placeholder
        # ids are text (as in a decode step that generated one), and it runs as the unpatched
        # model runs it.
        call.expects_prefill = past == 0 and bool(call.brought & call.placeholders)
        state = call.prefill
        if call.ids_from_embeds:
            return args, kwargs
        if state is None or kwargs.get("position_ids") is not None or input_ids is None:
            return args, kwargs
        if past == 0:
            return args, kwargs
        # A decode step of a manual loop: continue from where the unpruned sequence would be.
        if self.mrope and call.next_position is not None:
            # As generate continues M-RoPE: one past the prompt's largest position (padding
            # holds none), then one per token decoded since.
            decoded = past - state.index.shape[1]
            steps = torch.arange(input_ids.shape[1], device=input_ids.device)
            start = call.next_position.to(input_ids.device).unsqueeze(-1) + decoded
            kwargs["position_ids"] = (start + steps).unsqueeze(0).expand(3, -1, -1)
        else:
            deltas = getattr(self.base, "rope_deltas", None) if self.mrope else None
            kwargs["position_ids"] = sequence.decode_positions(
                input_ids, state, past, deltas, self.mrope
            )
        call.positions_supplied = True
        return args, kwargs

    def _after_base(self, module, args, output):
        call = self._call()
        if call.expects_prefill and not call.prefill_seen:
            call.expects_prefill = False
            raise PruningNotApplied(
                f"{type(self.model).__name__} ran a prefill over image/video placeholder tokens "
                "without its language model receiving inputs_embeds through visprune's hook on "
                "model.model.language_model"
            )

    def _placeholder_kinds(self, input_ids: Tensor | None, brought: set[str]) -> set[str]:
        """Which of the kinds the call brought pixels for have placeholders in ``input_ids``.

        Only those matter (a placeholder without pixels is text), so a decode step, which
        brings none, reads nothing from the device; a prefill reads once for all its kinds.
        """
        kinds = [kind for kind in self.token_ids() if kind in brought]
        if not isinstance(input_ids, Tensor) or not kinds:
            return set()
        ids = self.token_ids()
        present = torch.stack([(input_ids == ids[kind]).any() for kind in kinds]).tolist()
        return {kind for kind, found in zip(kinds, present, strict=True) if found}

    # ------------------------------------------------------------------------------ prefill
    def _before_language_model(self, module, args, kwargs):
        call = self._call()
        call.layer_plan = None
        past = compat.cache_length(compat.find_cache(kwargs))
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            if call.expects_prefill:
                raise PruningNotApplied(
                    "the language model received input_ids instead of inputs_embeds, so the "
                    "image features never reached a place where visprune can select them"
                )
            return args, kwargs
        input_ids = call.input_ids
        if input_ids is not None and input_ids.shape != embeds.shape[:2]:
            input_ids = None
        if past:
            if call.brought & call.placeholders:
                self._refuse_chunked_prefill()
            if call.prefill is not None:
                mask = kwargs.get("attention_mask")
                if isinstance(mask, dict) or (isinstance(mask, Tensor) and mask.dim() == 4):
                    # Built for the unpruned cache layout; the language model rebuilds it from
                    # the 2-D mask of the shortened cache (generated tokens are never padding).
                    kwargs["attention_mask"] = None
                sequence.continue_decode(
                    kwargs,
                    call.prefill,
                    embeds.shape[1],
                    past,
                    self.positions == "compact",
                    call.positions_supplied,
                )
            return args, kwargs
        call.prefill = None
        call.selections = self._last_selections = []
        call.next_position = None
        if self.mrope:
            call.next_position = compat.next_mrope_position(kwargs.get("position_ids"))
        kinds = call.brought & call.placeholders
        if not kinds:
            return args, kwargs  # no images encoded (placeholder ids, if any, are text)
        if input_ids is None:
            raise PruningNotApplied(
                "the language model's prefill could not be matched with the prompt that "
                "carried the images (no input_ids or inputs_embeds of the same shape)"
            )
        fresh, call.fresh = call.fresh, set()
        visual = {kind: input_ids == self.token_ids()[kind] for kind in sorted(kinds)}
        call.prefill_seen = True
        unrecorded = kinds - call.encoded - call.known
        if unrecorded:
            self._refuse_unrecorded(visual, unrecorded)
        self._prefill(call, kwargs, embeds, input_ids, visual, continues=not fresh & kinds)
        return args, kwargs

    def _refuse_chunked_prefill(self) -> None:
        raise ValueError(
            "a forward with a non-empty KV cache carries image/video placeholder tokens: the "
            "prompt arrives in chunks (prefill chunking, or a cache reused across calls), "
            "which visprune cannot prune. Prefill the whole prompt in one call (no "
            "prefill_chunk_size) with a fresh cache."
        )

    def _refuse_unrecorded(self, visual: dict, kinds: set[str]) -> None:
        counts = ", ".join(f"{int(visual[kind].sum())} {kind}" for kind in sorted(kinds))
        raise PruningNotApplied(
            f"this call carries images or video ({counts} placeholder tokens), but their "
            "encoder output did not pass through model.model.get_image_features / "
            "get_video_features after visprune.apply, where visprune records it (ready "
            "mm_encoder_outputs must be computed with the pruned model)"
        )

    def _prefill(
        self,
        call: CallState,
        kwargs: dict,
        embeds: Tensor,
        input_ids: Tensor,
        visual: dict,
        continues: bool,
    ) -> None:
        batch, length, _ = embeds.shape
        mask = compat.key_padding_mask(kwargs.get("attention_mask"), length)
        vision = {
            kind: self._vision_per_layout(kind, call.layouts.get(kind, [])) for kind in visual
        }
        layouts = {kind: call.layouts.get(kind, []) for kind in visual}
        items = locate_items(input_ids, visual, layouts, vision)
        if self.layer_pruner is not None:  # the method runs between decoder layers
            call.layer_plan = self.layer_pruner.plan(items, mask, visual, length)
            return
        texts = None
        if self.method.uses & {"text", "query"}:
            texts = self._texts_for_prefill(call, input_ids, embeds, mask, visual, continues)
        check_item_scores(self.method, self.model.config.model_type, items)
        run_method(self.method, items, embeds, texts, compile=self.compile)
        embeds = place_merged(items, embeds, self.project_vision)
        call.selections = self._last_selections = selections_of(items)
        if all(item.keeps_all() for item in items):
            return
        keep = keep_mask(items, batch, length, embeds.device)
        call.prefill = sequence.shorten(kwargs, embeds, keep, mask, self.positions == "compact")
        self.shorten_family_inputs(kwargs, keep, call.prefill.index)

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
        self,
        call: CallState,
        input_ids: Tensor,
        embeds: Tensor,
        mask: Tensor | None,
        visual: dict,
        continues: bool,
    ) -> list[Tensor]:
        """The prompt texts; a re-run prefill (``generate(use_cache=False)`` re-sends the prompt
        plus the tokens generated so far, without encoding again) keeps the first prompt's text,
        so generated tokens never change what the method selects."""
        previous = call.prompt_cache
        if continues and previous is not None:
            ids, texts = previous
            width = ids.shape[1]
            if input_ids.shape[1] > width and torch.equal(input_ids[:, :width], ids):
                return texts
        texts = prompt_texts(embeds, mask, visual)
        # Ids found from embeddings are -1 on every text token: no prompt to recognise later.
        call.prompt_cache = None if call.ids_from_embeds else (input_ids, texts)
        return texts
