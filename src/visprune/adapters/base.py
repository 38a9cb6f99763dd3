"""The adapter: the hooks that connect a model to a method, and the checks that it pruned.

An adapter attaches to ONE model instance through forward hooks and instance attributes (no
class is patched) and undoes all of it in :meth:`Adapter.remove`. Each hook has its own module:

- :mod:`.encoders`: ``get_image_features`` / ``get_video_features`` of the base model, wrapped on
  the instance, record how many tokens each image or video has, its frames and grid (and, for
  "vision"-stage methods, its pre-projector features).
- :mod:`.calls`: a pre-hook on the base model (``model.model``) records ``input_ids`` (or, for
  ``inputs_embeds``, where the placeholder embeddings sit) and which kinds the call carries
  (pixels or encoder outputs); in decode steps without ``position_ids`` (manual loops) it
  supplies the positions the shortened cache needs. Its post-hook checks that a prefill over
  image tokens reached the language model through visprune.
- :mod:`.prefill`: a pre-hook on the language model sees the final ``inputs_embeds``: at
  prefill it runs the method per image/frame and shortens the sequence (``sequence.shorten``);
  decode steps get a mask and positions that fit the shortened cache.
- ``model.loss_function`` is overridden on the instance to drop the labels of removed positions.

The invariant, checked on every call: when a call encodes images or video and its prefill runs
over their placeholder tokens, either they were pruned (selections recorded, the shortened
sequence handed on) or visprune raises. A call (or a decode step) that carries no pixels and no
encoder output encodes nothing: its placeholder ids, if any, are text, and it runs exactly as the
unpatched model runs it. A kind's records serve only the forward that encoded it or that hands
its very encoder output back, so per-call state never leaks from one call into another.
Whatever it reads from transformers internals goes through
:mod:`visprune.compat`, and inside the language model (layer-stage methods) through
:mod:`visprune.compat_layers`. Per-call state is per thread (:class:`records.CallState`).

Family files answer only family questions: which token ids are visual, how an encoder output
splits into images, frames and grids, and where the pre-projector features are.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..compat import encoder_features
from ..methods import Method
from . import calls, encoders, prefill, sequence
from .layers import LayerPruner, layer_positions
from .needs import check_method
from .records import CallState, Layout, Selection
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
        #: The last call's selections in any thread: what ``selections`` gives a thread that
        #: made no call of its own (set by the prefill and layer-stage hooks).
        self.last_selections: list[Selection] = []
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
    def call_state(self) -> CallState:
        """This thread's per-call state, which every hook of one call reads and writes."""
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = CallState()
        return state

    @property
    def _captured_vision(self) -> list[Tensor]:
        """Pre-projector features captured in this thread's last encoder call."""
        return self.call_state().captured_vision

    @property
    def selections(self) -> list[Selection]:
        """This thread's last call's selections; in a thread that made no call, the last
        selections of any thread."""
        state = getattr(self._local, "state", None)
        return state.selections if state is not None else self.last_selections

    # --------------------------------------------------------------------------- attach/remove
    def _attach(self) -> None:
        if self.method.stage == "layer":  # first: it checks the decoder layers, touches nothing
            self.layer_pruner = LayerPruner(self)
        for kind in self.token_ids():
            name = f"get_{kind}_features"
            if hasattr(self.base, name):
                encode = getattr(self.base, name)
                setattr(self.base, name, encoders.record_encoder(self, kind, encode))
                self._wrapped.append(name)
        capture = self.vision_capture_module() if self.method.stage == "vision" else None
        if capture is not None:
            hook = functools.partial(encoders.capture_vision, self)
            self._hooks.append(capture.register_forward_pre_hook(hook))
        if self.method.uses & {"cls_attention", "vision_keys", "cls_state"}:
            layer = self.score_layer(self.model)
            if layer is not None:
                self._captures.append(
                    ScoreCapture(
                        layer,
                        active=lambda: self.call_state().capturing,
                        record=lambda scores: self.call_state().captured_scores.append(scores),
                    )
                )
        self._hooks += [
            self.base.register_forward_pre_hook(
                functools.partial(calls.before_base, self), with_kwargs=True
            ),
            self.base.register_forward_hook(functools.partial(calls.after_base, self)),
            self.language_model.register_forward_pre_hook(
                functools.partial(prefill.before_language_model, self), with_kwargs=True
            ),
        ]
        original_loss = self.model.loss_function
        self._had_loss_override = "_loss_function" in self.model.__dict__

        def loss_function(logits, labels, vocab_size, **kwargs):
            state = self.call_state().prefill
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
