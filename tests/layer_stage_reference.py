"""The hand-run twin of the methods that prune inside the language model (FastV, PyramidDrop, DART).

It never goes through visprune: a twin with the same weights runs its own decoder layers by
hand, the layers before each pruning layer on the full sequence (the inputs its own ``generate``
hands layer 0), then only the rows that ``handle.selections`` say were kept, with the KV cache of
the earlier layers cut to those rows, and decodes greedily from that cache.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from layer_stage_models import deep
from tiny_vlms import GENERATE, SPECIAL
from visprune import compat

STEPS = GENERATE["max_new_tokens"]


FAMILIES = ["llava", "qwen2_vl", "internvl"]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def pair(family: str):
    model = deep(family)
    twin = deep(family)
    return model, twin


def greedy(logits: Tensor) -> Tensor:
    logits = logits.clone()
    logits[:, list(SPECIAL)] = -torch.inf
    return logits.argmax(-1)


def layer_inputs(twin, run) -> list[dict]:
    """What the twin's decoder layer 0 receives in each forward of ``run()``."""
    seen: list[dict] = []

    def record(module, args, kwargs):
        seen.append(
            {
                "hidden": args[0] if args else kwargs["hidden_states"],
                "mask": kwargs.get("attention_mask"),
                "rotary": kwargs["position_embeddings"],
            }
        )

    def deepstack(module, args, kwargs):  # Qwen3-VL: added to the first layers' outputs
        if kwargs.get("visual_pos_masks") is not None:
            seen.append({"visual": kwargs["visual_pos_masks"]})
            seen.append({"levels": kwargs["deepstack_visual_embeds"]})

    language_model = twin.model.language_model
    hooks = [
        language_model.layers[0].register_forward_pre_hook(record, with_kwargs=True),
        language_model.register_forward_pre_hook(deepstack, with_kwargs=True),
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    extra = [call for call in seen if "hidden" not in call]
    calls = [call for call in seen if "hidden" in call]
    if extra:
        calls[0]["deepstack"] = (extra[0]["visual"], extra[1]["levels"])
    return calls


def lm_mask(twin, data: dict) -> Tensor:
    """The 2-D padding mask the language model sees (all ones when the data has none)."""
    mask = data.get("attention_mask")
    return torch.ones_like(data["input_ids"]) if mask is None else mask


def packed(keep: Tensor) -> Tensor:
    """``(B, L)`` bool -> ``(B, L')`` kept positions per row, left-padded with -1."""
    rows = [row.nonzero().squeeze(-1) for row in keep]
    longest = max(len(row) for row in rows)
    return torch.stack([torch.cat([row.new_full((longest - len(row),), -1), row]) for row in rows])


def stage_indices(data: dict, selections) -> list[tuple[int, Tensor]]:
    """Per pruning: its layer and the ``(B, L')`` positions kept from then on (padding is
    left out, so the longest row of real kept tokens sets the length)."""
    stages = []
    for number in range(len(selections[0].stages)):
        keep = lm_mask(None, data).bool()
        for record in selections:
            layer, kept = record.stages[number]
            keep[record.sample, record.candidates] = False
            keep[record.sample, record.candidates[kept]] = True
        stages.append((layer, packed(keep)))
    return stages


def causal(valid: Tensor) -> Tensor:
    """``(B, L)`` valid keys -> ``(B, 1, L, L)`` bool SDPA mask; padding rows see themselves."""
    length = valid.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool).tril()
    mask = lower[None] & valid[:, None, :]
    mask |= torch.eye(length, dtype=torch.bool)[None] & ~valid[:, :, None]
    return mask[:, None]


def run_layers(twin, layers, hidden, mask, rotary, cache, deepstack=None, first=0):
    for number, layer in enumerate(layers, start=first):
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=rotary,
            use_cache=True,
            **compat.cache_argument(layer, cache),
        )
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        if deepstack is not None and number < len(deepstack[1]):
            visual, levels = deepstack
            hidden = hidden.clone()
            hidden[visual] = hidden[visual] + levels[number]
    return hidden


def two_part(twin, first: dict, padding: Tensor, stages, cache):
    """Logits ``(B, L', V)`` of the hand-built pruned prefill; ``cache`` ends cut to the kept
    rows in every layer."""
    layers = list(twin.model.language_model.layers)
    batch, length, _ = first["hidden"].shape
    hidden, mask, rotary = first["hidden"], first["mask"], first["rotary"]
    current = torch.arange(length).expand(batch, -1)
    start = 0
    for layer, index in stages:
        deepstack = first.get("deepstack") if start == 0 else None
        hidden = run_layers(twin, layers[start:layer], hidden, mask, rotary, cache, deepstack)
        column = torch.full((batch, length), -1, dtype=torch.long)
        for row in range(batch):
            present = current[row] >= 0
            column[row, current[row][present]] = torch.arange(current.shape[1])[present]
        local = column.gather(1, index.clamp_min(0)).clamp_min(0)
        hidden = hidden.gather(1, local[..., None].expand(-1, -1, hidden.shape[-1]))
        for number in range(layer):
            entry = cache.layers[number]
            rows = local[:, None, :, None].expand(-1, entry.keys.shape[1], -1, entry.keys.shape[-1])
            entry.keys, entry.values = entry.keys.gather(2, rows), entry.values.gather(2, rows)
        safe = index.clamp_min(0)
        rotary = tuple(
            part.expand(batch, -1, -1).gather(1, safe[..., None].expand(-1, -1, part.shape[-1]))
            for part in first["rotary"]
        )
        valid = (index >= 0) & padding.bool().gather(1, safe)
        mask = causal(valid)
        current, start = index, layer
    hidden = run_layers(twin, layers[start:], hidden, mask, rotary, cache)
    return twin.lm_head(twin.model.language_model.norm(hidden)), valid


def reference_generate(twin, data: dict, selections) -> tuple[Tensor, list[Tensor]]:
    """Greedy tokens and per-step logits of the hand-built pruned model, with a cache."""
    calls = layer_inputs(twin, lambda: twin.generate(**data, **GENERATE))
    cache = compat_cache(twin)
    logits, valid = two_part(
        twin, calls[0], lm_mask(twin, data), stage_indices(data, selections), cache
    )
    steps, tokens = [logits[:, -1]], [greedy(logits[:, -1])]
    layers = list(twin.model.language_model.layers)
    embed = twin.get_input_embeddings()
    for step in range(1, STEPS):
        keys = torch.cat([valid, torch.ones(valid.shape[0], step, dtype=torch.bool)], dim=1)
        hidden = run_layers(
            twin,
            layers,
            embed(tokens[-1][:, None]),
            keys[:, None, None, :],
            calls[step]["rotary"],
            cache,
        )
        steps.append(twin.lm_head(twin.model.language_model.norm(hidden))[:, -1])
        tokens.append(greedy(steps[-1]))
    return torch.stack(tokens, dim=1), steps


def compat_cache(twin):
    from transformers import DynamicCache

    return DynamicCache(config=twin.model.language_model.config)


def generate(model, data, **options):
    out = model.generate(
        **data, **GENERATE, output_logits=True, return_dict_in_generate=True, **options
    )
    return out.sequences[:, data["input_ids"].shape[1] :], list(out.logits)


def close(actual, expected) -> None:
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
