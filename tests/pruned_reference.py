"""The hand-built pruned reference of the adapter tests, which never goes through visprune.

It takes an unpatched model's language-model inputs (the full ``inputs_embeds`` and positions),
drops the visual positions that a handle's ``selections`` say were removed, and runs the plain
language model on the shortened sequence, decoding greedily step by step. For Gemma 3 it runs the
plain base model on the shortened embeddings and token types, so transformers itself builds the
masks in which the kept image tokens of one image attend to each other both ways. A second model
instance with the same weights (``twin``) runs it, so no hook of the handle can touch it.

Also here: the checks that compare selections and that a model is left unpatched, and the
visual runs and prompt text of a row that the methods receive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tiny_vlms import GENERATE, IMG, SPECIAL, VID, visual_mask
from visprune import compat
from visprune.adapters import Selection

#: New tokens of every greedy generation.
STEPS = GENERATE["max_new_tokens"]


def lm_inputs(model, data: dict) -> dict:
    """What the language model of an UNPATCHED model receives in ``model(**data)``."""
    seen: dict = {}

    def record(module, args, kwargs):
        seen.update(
            embeds=kwargs["inputs_embeds"],
            positions=kwargs.get("position_ids"),
            mask=kwargs.get("attention_mask"),
            visual=kwargs.get("visual_pos_masks"),  # Qwen3-VL deepstack
            deepstack=kwargs.get("deepstack_visual_embeds"),
        )

    hook = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model(**data)
    finally:
        hook.remove()
    return seen


def newline_mask(model, data: dict, embeds: Tensor, kinds=("image", "video")) -> Tensor:
    """Visual positions whose embedding is the model's ``image_newline`` (LLaVA-NeXT/OneVision)."""
    newline = getattr(model.model, "image_newline", None)
    ids = data["input_ids"]
    if newline is None:
        return torch.zeros_like(ids, dtype=torch.bool)
    visual = torch.zeros_like(ids, dtype=torch.bool)
    if "image" in kinds:
        visual |= ids == IMG
    if "video" in kinds:
        visual |= ids == VID
    return visual & (embeds == newline).all(-1)


def always_kept(family: str, model, data: dict, embeds: Tensor, newlines: str, stage: str):
    """Visual tokens that are never candidates, derived from the model, not from visprune.

    OneVision's video newline always; LLaVA-NeXT/OneVision image newlines with
    ``newlines="keep"`` or a "vision"-stage method (newlines have no pre-projector feature).
    """
    fixed = newline_mask(model, data, embeds, kinds=("video",))
    anyres = ("llava_next", "llava_next_video", "llava_onevision")
    if newlines == "keep" or (stage == "vision" and family in anyres):
        fixed |= newline_mask(model, data, embeds, kinds=("image",))
    return fixed


def keep_mask(input_ids: Tensor, selections: list[Selection], fixed: Tensor) -> Tensor:
    """Positions that survive: every non-visual token, the fixed ones, and the selected ones."""
    keep = ~visual_mask(input_ids) | fixed
    for record in selections:
        assert not bool(fixed[record.sample, record.positions].any()), "a fixed token competed"
        keep[record.sample, record.positions] = True
    return keep


def shorten(captured: dict, keep: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Drop the removed positions of equally long rows: shortened embeddings and positions."""
    embeds = captured["embeds"]
    batch, length, width = embeds.shape
    kept = keep.sum(-1)
    assert bool((kept == kept[0]).all()), "reference rows must keep equal counts"
    index = keep.nonzero()[:, 1].view(batch, -1)
    short = embeds.gather(1, index.unsqueeze(-1).expand(-1, -1, width))
    if mode == "compact":
        return short, torch.arange(index.shape[1]).expand(batch, -1)
    positions = captured["positions"]
    if positions is None:
        positions = torch.arange(length).expand(batch, length)
    return short, positions.gather(-1, index.expand(*positions.shape[:-2], batch, -1))


def greedy(logits: Tensor) -> Tensor:
    """The token ``generate(do_sample=False, suppress_tokens=SPECIAL)`` picks."""
    logits = logits.clone()
    logits[:, list(SPECIAL)] = -torch.inf
    return logits.argmax(-1)


def deepstack_by_hand(twin, length: int | None = None) -> dict:
    """Qwen3-VL: the deepstack inputs of the twin's last reference, pruned by hand (else {}).

    :func:`reference_for` leaves them on the twin, so every reference prefill adds them; a
    re-run prefill of ``length`` tokens (no cache) has generated, non-visual tokens at the end.
    """
    extra = dict(getattr(twin, "_reference_deepstack", {}))
    if extra and length is not None:
        visual = extra["visual_pos_masks"]
        grown = visual.new_zeros(visual.shape[0], length)
        grown[:, : visual.shape[1]] = visual
        extra["visual_pos_masks"] = grown
    return extra


def run_reference(twin, embeds: Tensor, prefill: bool, **kwargs):
    """The twin's plain language model on hand-shortened inputs.

    Gemma 3 runs through its base model, which builds the masks from the shortened token types
    at a prefill (``reference_for`` leaves them on the twin; a re-run prefill of generated
    tokens has text types at the end) and plain causal masks in decode steps, as ``generate``
    passes no token types there.
    """
    length = embeds.shape[1]
    types = getattr(twin, "_reference_types", None)
    if types is None:
        extra = deepstack_by_hand(twin, length) if prefill else {}
        return twin.model.language_model(inputs_embeds=embeds, **kwargs, **extra)
    if prefill:
        kwargs["token_type_ids"] = F.pad(types, (0, length - types.shape[1]))
    cache = kwargs.pop("past_key_values", None)
    return twin.model(inputs_embeds=embeds, **kwargs, **compat.cache_argument(twin.model, cache))


def reference_prefill(twin, embeds: Tensor, positions: Tensor) -> Tensor:
    """Logits of every position of the shortened sequence (no cache)."""
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    out = run_reference(
        twin, embeds, True, position_ids=positions, attention_mask=mask, use_cache=False
    )
    return twin.lm_head(out.last_hidden_state)


def reference_decode(
    twin, embeds: Tensor, positions: Tensor, steps: int = STEPS, use_cache: bool = True
) -> tuple[Tensor, list[Tensor]]:
    """Greedy decoding of the shortened prompt on the plain language model.

    New tokens continue from the last prompt position (``positions[..., -1] + 1``), which is what
    ``generate`` does: ``L' + t`` compact, ``L + t`` original, and for Qwen the text position
    after the M-RoPE prompt. Without a cache the whole shortened prefix is re-run every step.

    Returns the tokens ``(B, steps)`` and the raw next-token logits of every step.
    """
    embed = twin.get_input_embeddings()
    batch = embeds.shape[0]
    tokens, logits = [], []
    cache = None
    step_embeds, step_positions = embeds, positions
    seen = embeds.shape[1]
    for step in range(steps):
        prefill = step == 0 or not use_cache  # without a cache every step re-runs the prompt
        out = run_reference(
            twin,
            step_embeds,
            prefill,
            position_ids=step_positions,
            attention_mask=torch.ones(batch, seen, dtype=torch.long),
            past_key_values=cache,
            use_cache=use_cache,
        )
        logits.append(twin.lm_head(out.last_hidden_state[:, -1]))
        tokens.append(greedy(logits[-1]))
        following = positions[..., -1:] + 1 + step
        new = embed(tokens[-1][:, None])
        seen += 1
        if use_cache:
            cache = out.past_key_values
            step_embeds, step_positions = new, following
        else:
            step_embeds = torch.cat([step_embeds, new], dim=1)
            step_positions = torch.cat([step_positions, following], dim=-1)
    return torch.stack(tokens, dim=1), logits


def reference_for(
    family: str, twin, data: dict, handle, newlines: str = "candidates"
) -> tuple[Tensor, Tensor, Tensor]:
    """Shortened embeddings, positions and the keep mask ``(B, L)`` per ``handle.selections``."""
    captured = lm_inputs(twin, data)
    fixed = always_kept(family, twin, data, captured["embeds"], newlines, handle.method.stage)
    keep = keep_mask(data["input_ids"], handle.selections, fixed)
    twin._reference_deepstack = {}
    twin._reference_types = None
    if "token_type_ids" in data:  # Gemma 3
        twin._reference_types = data["token_type_ids"][keep].view(keep.shape[0], -1)
    if captured.get("visual") is not None:
        visual = captured["visual"]
        index = keep.nonzero()[:, 1].view(keep.shape[0], -1)
        levels = [level[keep[visual]] for level in captured["deepstack"]]
        twin._reference_deepstack = {
            "visual_pos_masks": visual.gather(1, index),
            "deepstack_visual_embeds": levels,
        }
    return (*shorten(captured, keep, handle.positions), keep)


def generate(model, data, **options):
    """Greedy generation: the new tokens ``(B, STEPS)`` and the raw logits of each step."""
    out = model.generate(
        **data, **GENERATE, output_logits=True, return_dict_in_generate=True, **options
    )
    return out.sequences[:, data["input_ids"].shape[1] :], list(out.logits)


def assert_logits_close(actual: list[Tensor], expected: list[Tensor]) -> None:
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def assert_same_selections(got: list[Selection], want: list[Selection]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.sample, a.image, a.frame, a.n, a.grid, a.kind) == (
            b.sample,
            b.image,
            b.frame,
            b.n,
            b.grid,
            b.kind,
        )
        assert torch.equal(a.kept, b.kept) and torch.equal(a.positions, b.positions)


def hooks_of(model) -> tuple[int, int]:
    return len(model.model._forward_pre_hooks), len(model.model.language_model._forward_pre_hooks)


def assert_unpatched(model) -> None:
    assert hooks_of(model) == (0, 0)
    assert "get_image_features" not in model.model.__dict__
    assert "get_video_features" not in model.model.__dict__
    assert "_loss_function" not in model.__dict__
    assert "_visprune_handles" not in model.__dict__


def visual_runs(row: Tensor) -> list[tuple[int, Tensor]]:
    """``(token id, positions)`` of each contiguous run of placeholders in one row."""
    runs: list[tuple[int, list[int]]] = []
    for position, token in enumerate(row.tolist()):
        if token not in (IMG, VID):
            continue
        if runs and runs[-1][0] == token and runs[-1][1][-1] == position - 1:
            runs[-1][1].append(position)
        else:
            runs.append((token, [position]))
    return [(token, torch.tensor(positions)) for token, positions in runs]


def prompt_text(embeds: Tensor, data: dict, sample_index: int) -> Tensor:
    """LLM embeddings of the prompt tokens after the row's last visual token (spec "Text")."""
    row = data["input_ids"][sample_index]
    last = int(visual_mask(row).nonzero().max())
    tail = torch.arange(last + 1, len(row))
    tail = tail[data["attention_mask"][sample_index, tail].bool()]
    return embeds[sample_index, tail]
