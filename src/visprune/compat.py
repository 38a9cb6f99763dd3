"""What visprune reads from transformers internals, with each version difference, except what
layer-stage methods read inside the language model (:mod:`visprune.compat_layers`).

The adapters never look at a transformers keyword, attribute or version themselves; they ask
this module or :mod:`visprune.compat_layers`. When a release moves a seam, one of the two is the
file to change, and the tests that
break a seam on purpose (``tests/test_compat.py``) show that visprune then raises instead of
running unpruned.

Version differences in the tested range (``TESTED_RANGE``):

- **Cache keyword.** Up to 5.23 the KV cache reaches the language model as ``past_key_values``;
  5.24 renamed it ``cache`` (``past_key_values`` is still accepted through a deprecation shim
  until 5.40). :func:`find_cache` accepts both, and refuses a cache object under any other name,
  because a decode step that cannot be told from a prefill would re-run selection on one token.
- **Where encoder outputs arrive.** Up to 5.23 ``forward`` calls the base model's
  ``get_image_features`` / ``get_video_features`` itself. From 5.24, ``generate`` calls them once
  before prefill and hands the result to the prefill as ``mm_encoder_outputs`` (it expands them
  in place for beam search and ``num_return_sequences``; decode steps with a cache get none),
  and ``pixel_values`` is no longer passed. Both routes go through the base model's
  ``get_{kind}_features``, which is the seam visprune wraps; :func:`kinds_in_call` tells which
  kinds a forward carries by either route, so a call whose encoder output visprune did not see
  raises. A forward that carries neither encodes nothing: its placeholder ids are text, as the
  unpatched model treats them.
- **LLaVA-NeXT-Video video features.** Up to 5.23 ``get_video_features`` returns one
  ``(frames, tokens per frame, d)`` tensor per video in ``pooler_output``; 5.24 returns one
  ``(frames * tokens per frame, d)`` row per video. :func:`tokens_per_item` reads both.
- **Masks built from token types (Gemma 3).** The base model builds the language model's masks
  (a dict per layer type: full and sliding-window attention, image tokens of one image attending
  to each other both ways) from ``token_type_ids`` before calling it; at a pruned prefill
  visprune rebuilds them for the shortened sequence with the model class's own
  ``create_masks_for_generate`` (:func:`build_attention_masks`), whose cache parameter is
  ``cache`` from 5.24 and ``past_key_values`` before. SDPA leaves out (``None``) the mask of a
  layer type that needs none; eager always builds float masks. :func:`key_padding_mask` reads
  the padding from any of them.
- **Stable seams relied on everywhere:** ``model.model`` (the base model) with
  ``.language_model``, the language model receiving ``inputs_embeds``, ``get_seq_length()`` on
  caches, and ``pooler_output`` holding the per-image projected features.

What layer-stage methods read inside the language model (decoder layers, their attention, the
causal mask builder, the cache's per-layer tensors) lives in :mod:`visprune.compat_layers`.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

import torch
from packaging.version import Version

#: The transformers releases the test suite runs on: (oldest, newest), both ends inclusive.
TESTED_RANGE = ("5.19.0", "5.25.0")

#: Keywords under which a KV cache reaches the language model, newest first.
CACHE_KEYWORDS = ("cache", "past_key_values")

#: Keywords of a forward that carry pixels (encoded inside the forward, up to 5.23), by the
#: kind of placeholder they fill.
PIXEL_KEYWORDS = {
    "pixel_values": "image",
    "pixel_values_images": "image",
    "pixel_values_videos": "video",
}

#: Keyword of a forward that carries ready encoder outputs (5.24 and later).
ENCODER_OUTPUTS_KEYWORD = "mm_encoder_outputs"

#: Keyword of the per-token types from which a base model (Gemma 3) builds the attention masks.
TOKEN_TYPES_KEYWORD = "token_type_ids"


class PruningNotApplied(RuntimeError):
    """visprune cannot prune this call and refuses to run it.

    Raised instead of letting the model run unpruned, which would look like a pruned run. Two
    causes, with different advice:

    - a seam into transformers moved (``usage=False``): outside :data:`TESTED_RANGE` the message
      says which versions to install; inside it, the model or call departs from the stock code
      visprune is tested on, and the message says so;
    - the call asks for something the method cannot do (``usage=True``, e.g. a static KV cache
      for a method that shortens the cache between decoder layers): ``what`` says what to change,
      and no other transformers would help.
    """

    def __init__(self, what: str, *, usage: bool = False) -> None:
        version = transformers_version()
        if usage:
            advice = ""
        elif in_tested_range(version):
            advice = (
                f" transformers {version} is in the tested range ({TESTED_RANGE[0]} to "
                f"{TESTED_RANGE[1]}), so this model or call departs from the stock transformers "
                "code visprune is tested on; please report it with the model class and the call."
            )
        else:
            advice = (
                f" visprune is tested with transformers {TESTED_RANGE[0]} to {TESTED_RANGE[1]}; "
                f"install a version in that range (pip install '{requirement()}') or a visprune "
                "release that supports this one."
            )
        super().__init__(
            f"visprune could not apply pruning with transformers {version}: {what}. "
            f"Nothing ran unpruned.{advice}"
        )
        self.usage = usage


def requirement() -> str:
    """The pip requirement of the tested range, patch releases of its newest minor included:
    ``transformers>=5.19,<5.26`` for ``("5.19.0", "5.25.0")``."""
    low, high = Version(TESTED_RANGE[0]), Version(TESTED_RANGE[1])
    lower = f"{low.major}.{low.minor}" if low.micro == 0 else str(low)
    return f"transformers>={lower},<{high.major}.{high.minor + 1}"


@functools.cache
def transformers_version() -> str:
    """The installed transformers version string."""
    import transformers

    return transformers.__version__


def in_tested_range(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed one) lies in :data:`TESTED_RANGE`.

    A patch release of the newest tested minor counts as tested.
    """
    parsed = Version(version or transformers_version())
    low, high = Version(TESTED_RANGE[0]), Version(TESTED_RANGE[1])
    return low <= parsed and parsed.release[:2] <= high.release[:2]


_warned: set[str] = set()


def warn_if_untested() -> None:
    """Warn once per process when the installed transformers is outside the tested range."""
    version = transformers_version()
    if version in _warned or in_tested_range(version):
        return
    _warned.add(version)
    warnings.warn(
        f"visprune is tested with transformers {TESTED_RANGE[0]} to {TESTED_RANGE[1]}, and "
        f"{version} is installed. visprune checks every call and raises if pruning cannot be "
        "applied, but install a tested version for results you can rely on.",
        UserWarning,
        stacklevel=3,
    )


def is_cache(value: Any) -> bool:
    """Whether ``value`` is a KV cache object (anything with ``get_seq_length``)."""
    return callable(getattr(value, "get_seq_length", None))


def find_cache(kwargs: dict) -> Any:
    """The KV cache a forward received, or ``None``.

    Raises
    ------
    PruningNotApplied
        When a cache object arrives under a keyword visprune does not know: it could not tell a
        decode step from a prefill.
    """
    for keyword in CACHE_KEYWORDS:
        cache = kwargs.get(keyword)
        if cache is not None:
            return cache
    for keyword, value in kwargs.items():
        if is_cache(value):
            raise PruningNotApplied(
                f"the language model received its KV cache as {keyword!r}, a keyword visprune "
                f"does not know (it knows {', '.join(CACHE_KEYWORDS)}), so a decode step cannot "
                "be told from a prefill"
            )
    return None


def output_cache(output: Any) -> Any:
    """The KV cache a model output returns (``output.cache`` from 5.24, else
    ``output.past_key_values``)."""
    for keyword in CACHE_KEYWORDS:
        cache = output.get(keyword) if hasattr(output, "get") else getattr(output, keyword, None)
        if cache is not None:
            return cache
    return None


def cache_argument(model: Any, cache: Any) -> dict:
    """``{keyword: cache}`` for calling ``model`` with a cache, under the keyword its forward
    declares (``cache`` from 5.24; ``past_key_values`` before, and deprecated after)."""
    parameters = inspect.signature(model.forward).parameters
    keyword = next((k for k in CACHE_KEYWORDS if k in parameters), CACHE_KEYWORDS[-1])
    return {keyword: cache}


def cache_length(cache: Any) -> int:
    """Tokens already in ``cache`` (0 for ``None`` or an empty cache)."""
    if cache is None:
        return 0
    return int(cache.get_seq_length())


def key_padding_mask(mask: Any, length: int) -> Any:
    """A 2-D ``(B, length)`` mask (1 = attend) from what the language model received.

    ``generate(cache_implementation="static")`` pre-builds a 4-D mask ``(B, 1, q, kv)`` (bool, or
    float with 0 where attended; for Qwen2-based models a dict of them per attention kind)
    sized to the static cache, and Gemma 3's base model always hands its language model such a
    dict; the pruned sequence needs a new one, so visprune reduces it to the keys some query
    attends to (each token attends at least to itself, padding is attended by none) and builds
    the 4-D mask again from that. ``None`` and 2-D masks pass through; a dict whose every entry
    is ``None`` (SDPA needs no mask: nothing is padded) gives ``None``.

    Raises
    ------
    ValueError
        For any other shape.
    """
    if mask is None or (hasattr(mask, "dim") and mask.dim() == 2):
        return mask
    if isinstance(mask, dict) and mask:
        # Models with several attention kinds (Qwen2, Gemma 3: full and sliding) get one mask
        # per kind; each holds the padding, and SDPA leaves out those it does not need.
        built = [mask.get("full_attention"), *mask.values()]
        mask = next((entry for entry in built if entry is not None), None)
        if mask is None:
            return None
    if not (hasattr(mask, "dim") and mask.dim() == 4):
        raise ValueError(
            f"visprune needs a 2-D attention mask, or the 4-D one generate builds; got "
            f"{type(mask).__name__} of shape {tuple(getattr(mask, 'shape', ()))}."
        )
    attended = mask if mask.dtype == torch.bool else mask == 0
    return attended[:, 0, :, :length].any(dim=-2).long()


def token_types(kwargs: dict) -> Any:
    """The ``token_type_ids`` a base-model forward received (``None`` when absent)."""
    return kwargs.get(TOKEN_TYPES_KEYWORD)


def build_attention_masks(
    model: Any,
    *,
    inputs_embeds: Any,
    attention_mask: Any,
    cache: Any,
    position_ids: Any,
    token_type_ids: Any,
) -> dict:
    """The attention masks ``model``'s base model builds for its language model, for these
    inputs: ``{layer type: (B, 1, q, kv) mask or None}``.

    Calls the model class's own ``create_masks_for_generate`` (Gemma 3: causal text, image
    tokens of one image attending to each other both ways, full and sliding-window layers),
    which is what the base model's forward does, so the masks are the ones the unpatched model
    builds for a prompt of these tokens.

    Raises
    ------
    PruningNotApplied
        When the model has no such function, or it declares no known cache parameter, or it
        returns anything but a dict of tensors (or ``None``) with one row per query.
    """
    build = getattr(type(model), "create_masks_for_generate", None)
    if build is None:
        raise PruningNotApplied(
            f"{type(model).__name__} has no create_masks_for_generate, with which visprune "
            "rebuilds its attention masks for the shortened sequence"
        )
    parameters = inspect.signature(build).parameters
    keyword = next((k for k in CACHE_KEYWORDS if k in parameters), None)
    if keyword is None:
        raise PruningNotApplied(
            f"{type(model).__name__}.create_masks_for_generate takes its KV cache under none of "
            f"{', '.join(CACHE_KEYWORDS)}"
        )
    masks = build(
        config=model.config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        token_type_ids=token_type_ids,
        **{keyword: cache},
    )
    queries = inputs_embeds.shape[1]

    def fits(mask: Any) -> bool:
        return mask is None or (
            isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-2] == queries
        )

    if not isinstance(masks, dict) or not all(fits(mask) for mask in masks.values()):
        raise PruningNotApplied(
            f"{type(model).__name__}.create_masks_for_generate returned "
            f"{type(masks).__name__}, not a dict of 4-D masks with {queries} query rows"
        )
    return masks


def tokens_per_item(features: Any) -> list[Any]:
    """Per image or video, its placeholder-ordered features ``(count, d)``, from a
    ``pooler_output`` that holds either those or ``(frames, per frame, d)`` blocks."""
    return [item.flatten(0, 1) if item.dim() == 3 else item for item in features]


def kinds_in_call(kwargs: dict) -> set[str]:
    """The kinds ("image", "video") a base-model forward carries, as pixels or as encoder
    outputs; a call that carries none encodes nothing, and its placeholder ids are text."""
    kinds = {kind for keyword, kind in PIXEL_KEYWORDS.items() if kwargs.get(keyword) is not None}
    return kinds | set(encoder_outputs(kwargs))


def placeholder_ids_from_embeds(base: Any, inputs_embeds: Any, token_ids: dict) -> Any:
    """``(B, L)`` ids for a forward given ``inputs_embeds``: the placeholder id where an
    embedding equals that placeholder's embedding (as transformers' ``get_placeholder_mask``
    finds them without ``input_ids``), -1 elsewhere.

    Parameters
    ----------
    base : the base model (``model.model``), whose ``get_input_embeddings()`` embeds ids.
    inputs_embeds : Tensor
        ``(B, L, d)`` the embeddings the forward received.
    token_ids : dict of str to int
        Placeholder id by kind.
    """
    embed = base.get_input_embeddings()
    ids = torch.full(inputs_embeds.shape[:2], -1, dtype=torch.long, device=inputs_embeds.device)
    for token in token_ids.values():
        placeholder = embed(torch.full((), token, dtype=torch.long, device=inputs_embeds.device))
        ids[(inputs_embeds == placeholder.to(inputs_embeds.dtype)).all(-1)] = token
    return ids


def next_mrope_position(position_ids: Any) -> Any:
    """``(B,)`` the M-RoPE position that follows a prompt: one past the largest of its
    temporal/height/width positions, where ``generate`` continues.

    ``position_ids`` is what the language model received at the prefill: ``(3, B, L)``, or from
    5.24 ``(4, B, L)`` with the text positions first. ``None`` for anything else.
    """
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 3:
        return None
    if position_ids.shape[0] not in (3, 4):
        return None
    return position_ids[-3:].amax(dim=(0, 2)) + 1


def layer_hidden_states(output: Any) -> Any:
    """The hidden states a vision encoder layer returns: the tensor itself (5.2x CLIP layers),
    or the first entry of the tuple older releases return."""
    return output[0] if isinstance(output, tuple) else output


def has_encoder_features(output: Any) -> bool:
    """Whether a ``get_{kind}_features`` output holds the per-item features in
    ``pooler_output`` (what a forward reads); ``return_dict=False`` gives a tuple instead."""
    return getattr(output, "pooler_output", None) is not None


def encoder_features(output: Any, kind: str) -> list[Any]:
    """The per-image (or per-video) projected features of a ``get_{kind}_features`` call."""
    features = getattr(output, "pooler_output", None)
    if features is None:
        raise ValueError(
            f"get_{kind}_features returned {type(output).__name__} without pooler_output; "
            "visprune needs the model's default return_dict=True outputs."
        )
    return list(features)


def encoder_outputs(kwargs: dict) -> dict[str, Any]:
    """The ready encoder outputs a forward carries (5.24+), by modality ("image", "video")."""
    outputs = kwargs.get(ENCODER_OUTPUTS_KEYWORD) or {}
    return {kind: value for kind, value in dict(outputs).items() if value is not None}
