"""Recording what the model's encoders produce, for the prefill that places their tokens.

``get_image_features`` / ``get_video_features`` of the base model are wrapped on the instance
(:func:`record_encoder`): each call records the layouts of the images or videos it encoded (token
counts, frames, grids) and, for "vision"-stage methods, the pre-projector features that a
forward pre-hook on the projector captures meanwhile (:func:`capture_vision`). Every transformers
release routes encoding through them: ``forward`` calls them (up to 5.23) or ``generate`` does
once before prefill (5.24+).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import compat

if TYPE_CHECKING:
    from .base import Adapter


def record_encoder(adapter: Adapter, kind: str, encode: Callable) -> Callable:
    """``encode`` (the base model's bound ``get_{kind}_features``), recording each call's
    layouts and output in the calling thread's state."""

    @functools.wraps(encode)
    def recorded(*args, **kwargs):
        call = adapter.call_state()
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
        call.layouts[kind] = adapter.describe(kind, output, args, kwargs)
        call.recorded[kind] = weakref.ref(output)
        call.encoded.add(kind)
        call.fresh.add(kind)
        return output

    return recorded


def capture_vision(adapter: Adapter, module: Any, inputs: tuple) -> None:
    """Forward pre-hook of the projector: keep its input during an encoder call."""
    # One hook for every thread: each keeps the features of its own encoder call.
    call = adapter.call_state()
    if call.capturing:
        call.captured_vision.append(inputs[0].detach())
