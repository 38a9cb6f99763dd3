"""Ragged batches reach the language model as long as their longest kept row.

When the rows of a left-padded batch drop different numbers of visual tokens (images of
different sizes or counts, prompts of different lengths), the pruned sequence holds each row's
real kept tokens (prompt text plus kept visual tokens) and no more padding than the longest row
needs: the prefill computes no position it can do without. Counts here come from the prompts
and ``handle.selections``, never from visprune's internal records.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import visprune
from layer_stage_models import deep
from tiny_vlms import CASES, GENERATE, QWEN, SPECIAL, collate, ragged_samples, sample, tiny
from visprune.adapters import sequence

#: In-LLM methods, pruning from layer 2 on (Qwen3-VL's deepstack fills layers 0 and 1).
LAYER_METHODS = [
    ("fastv", {"layer": 2, "budget": 0.5}),
    ("pdrop", {"layers": (2, 3), "budget": 0.75, "ratio": 0.5}),
    ("dart", {"layer": 2, "budget": 0.5, "image_pivots": 1, "text_pivots": 2}),
]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def case_id(case: tuple[str, bool]) -> str:
    family, video = case
    return f"{family}-video" if video else family


def ragged(family: str, model, video: bool = False) -> list[dict]:
    """Two prompts of different lengths whose longer one holds more visual tokens, so it drops
    more: padding to the batch length minus the smallest drop would leave room to spare."""
    if family in QWEN and video:
        return [
            sample(family, model, video=True, size=(4, 4), prefix=2, seed=1),
            sample(family, model, video=True, size=(2, 4), prefix=5, seed=2),
        ]
    if family in QWEN:
        return [
            sample(family, model, size=(4, 6), prefix=2, seed=1),
            sample(family, model, size=(2, 4), prefix=5, seed=2),
        ]
    if video:  # LLaVA-NeXT-Video, OneVision: every video has the same frames
        return [
            sample(family, model, video=True, images=2, prefix=2, seed=1),
            sample(family, model, video=True, prefix=6, suffix=3, seed=2),
        ]
    return ragged_samples(family, model)


def dropped_per_row(samples: list[dict], selections) -> list[int]:
    """The candidates each row dropped (the slots of merged tokens stay)."""
    dropped = [0] * len(samples)
    for record in selections:
        merged = 0 if record.merged_positions is None else len(record.merged_positions)
        dropped[record.sample] += record.n - len(record.kept) - merged
    return dropped


def longest_kept_row(samples: list[dict], selections) -> int:
    """The most real tokens any row keeps: its prompt minus the candidates it dropped."""
    dropped = dropped_per_row(samples, selections)
    return max(len(one["input_ids"]) - gone for one, gone in zip(samples, dropped, strict=True))


def assert_ragged(samples: list[dict], selections) -> None:
    """The batch is one where padding to its length minus the smallest drop wastes positions."""
    length = max(len(one["input_ids"]) for one in samples)
    dropped = dropped_per_row(samples, selections)
    assert longest_kept_row(samples, selections) < length - min(dropped), dropped


def generate(model, data: dict) -> tuple[Tensor, list[Tensor]]:
    """Greedy generation: the new tokens ``(B, steps)`` and the logits of each step."""
    out = model.generate(**data, **GENERATE, output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, data["input_ids"].shape[1] :], list(out.logits)


def assert_rows_as_alone(model, samples: list[dict], tokens, logits, decode) -> None:
    """Each row of a batch's ``decode`` result (tokens, per-step logits) is the row's alone."""
    for row, one in enumerate(samples):
        alone_tokens, alone_logits = decode(model, collate([one]))
        assert torch.equal(tokens[row], alone_tokens[0]), row
        for got, want in zip(logits, alone_logits, strict=True):
            torch.testing.assert_close(got[row], want[0], atol=2e-5, rtol=1e-4)


def widths_reaching(module: torch.nn.Module, run) -> list[int]:
    """The sequence length of every call of ``module`` (its hidden states or inputs_embeds)
    during ``run()``; the hook is added last, so it sees what visprune handed on."""
    widths: list[int] = []

    def record(module, args, kwargs):
        hidden = kwargs.get("inputs_embeds", kwargs.get("hidden_states"))
        if hidden is None:
            hidden = args[0]
        widths.append(hidden.shape[1])

    hook = module.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run()
    finally:
        hook.remove()
    return widths


@pytest.mark.parametrize(("family", "video"), [pytest.param(*c, id=case_id(c)) for c in CASES])
def test_prefill_is_as_long_as_the_longest_kept_row(family, video):
    """The prefill is as long as the longest row of kept tokens, and each row generates what
    it generates alone."""
    model = tiny(family)
    samples = ragged(family, model, video)
    data = collate(samples)
    handle = visprune.apply(model, "divprune", 0.5)
    out: dict = {}

    def run():
        out["batch"] = generate(model, data)

    widths = widths_reaching(model.model.language_model, run)
    assert_ragged(samples, handle.selections)
    assert widths[0] == longest_kept_row(samples, handle.selections)
    assert widths[1:] == [1] * (GENERATE["max_new_tokens"] - 1)
    assert_rows_as_alone(model, samples, *out["batch"], generate)


@pytest.mark.parametrize(
    ("method", "params"), LAYER_METHODS, ids=[method for method, _ in LAYER_METHODS]
)
@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen3_vl", "internvl"])
def test_layers_after_the_pruning_see_the_longest_kept_row(family, method, params):
    """In-LLM methods: from the (last) pruning layer on, the hidden states are as long as the
    longest row of real kept tokens, and each row generates what it generates alone."""
    model = deep(family)
    samples = ragged(family, model)
    data = collate(samples)
    handle = visprune.apply(model, method, **params)
    out: dict = {}

    def run():
        out["batch"] = generate(model, data)

    widths = widths_reaching(model.model.language_model.layers[-1], run)
    assert_ragged(samples, handle.selections)
    assert widths[0] == longest_kept_row(samples, handle.selections)
    assert widths[1:] == [1] * (GENERATE["max_new_tokens"] - 1)
    assert_rows_as_alone(model, samples, *out["batch"], generate)


def greedy(logits: Tensor) -> Tensor:
    logits = logits.clone()
    logits[:, list(SPECIAL)] = -torch.inf
    return logits.argmax(-1)


def manual_loop(model, data: dict, steps: int = 4) -> tuple[Tensor, list[Tensor]]:
    """Greedy decoding by hand: a prefill, then one token per call with the cache and an
    extended mask, no position ids."""
    out = model(**data, use_cache=True)
    mask = data["attention_mask"]
    tokens, logits = [], []
    for _ in range(steps):
        logits.append(out.logits[:, -1])
        tokens.append(greedy(out.logits[:, -1]))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=tokens[-1][:, None],
            past_key_values=out.past_key_values,
            attention_mask=mask,
            use_cache=True,
        )
    return torch.stack(tokens, dim=1), logits


MANUAL = [
    pytest.param("llava", "divprune", {"budget": 0.5, "positions": "compact"}, id="llava-compact"),
    pytest.param(
        "llava", "divprune", {"budget": 0.5, "positions": "original"}, id="llava-original"
    ),
    pytest.param("qwen2_5_vl", "divprune", {"budget": 0.5}, id="qwen2_5_vl"),
    pytest.param("llava", "fastv", {"layer": 2, "budget": 0.5}, id="llava-fastv"),
    pytest.param("qwen2_vl", "fastv", {"layer": 2, "budget": 0.5}, id="qwen2_vl-fastv"),
]


@pytest.mark.parametrize(("family", "method", "params"), MANUAL)
def test_manual_decode_of_a_ragged_batch_equals_each_row_alone(family, method, params):
    """A loop without position ids continues each row where its unpruned prompt would: rotary
    attention sees only distances, so every row decodes as it does alone (M-RoPE rows too,
    whose position deltas count from the real tokens)."""
    model = deep(family) if method == "fastv" else tiny(family)
    samples = ragged(family, model)
    visprune.apply(model, method, **params)
    assert_rows_as_alone(model, samples, *manual_loop(model, collate(samples)), manual_loop)


# ------------------------------------------------------------------ the shortening, by itself
@st.composite
def padded_batches(draw):
    """A left-padded batch: ``(B, L)`` keep mask (padding counts as kept, as no method drops
    it; each row's last token stays), its 2-D attention mask, and whether renumbering is on."""
    batch = draw(st.integers(1, 4))
    length = draw(st.integers(1, 12))
    keep = torch.ones(batch, length, dtype=torch.bool)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        padding = draw(st.integers(0, length - 1))
        mask[row, :padding] = 0
        bits = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        keep[row, padding:] = torch.tensor(bits[padding:], dtype=torch.bool)
        keep[row, -1] = True  # the prompt's last token is text
    return keep, mask, draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(padded_batches())
def test_shorten_keeps_each_rows_real_tokens_right_aligned(case):
    keep, mask, compact = case
    batch, length = keep.shape
    embeds = torch.arange(1.0, 1 + batch * length).view(batch, length, 1)
    labels = torch.arange(batch * length).view(batch, length)
    kwargs: dict = {"attention_mask": mask}
    state = sequence.shorten(kwargs, embeds, keep, mask, compact)
    real = keep & mask.bool()
    width = int(real.sum(-1).max())
    assert kwargs["inputs_embeds"].shape == (batch, width, 1)
    shortened = sequence.shorten_labels(labels, torch.zeros(batch, width, 1), state)
    for row in range(batch):
        kept = real[row].nonzero().squeeze(-1)
        pad = width - len(kept)
        assert torch.equal(kwargs["inputs_embeds"][row, pad:, 0], embeds[row, kept, 0])
        assert not bool(kwargs["inputs_embeds"][row, :pad].any())
        assert kwargs["attention_mask"][row].tolist() == [0] * pad + [1] * len(kept)
        assert shortened[row].tolist() == [-100] * pad + labels[row, kept].tolist()
        removed = int((~keep[row]).sum())
        assert int(state.dropped[row]) == removed
        # Without position ids each slot is numbered by its index (padding included); only
        # removed tokens lower the numbers.
        before = (~keep[row]).long().cumsum(-1)[kept]
        want = kept - before if compact else kept
        assert torch.equal(kwargs["position_ids"][row, pad:], want)
        # A manual loop continues where the unpruned sequence would: one past its last slot,
        # less the removed tokens when renumbered; M-RoPE from the real tokens' count.
        step = torch.zeros(batch, 1, dtype=torch.long)
        following = sequence.decode_positions(step, state, width, None, mrope=False)
        assert int(following[row, 0]) == length - (removed if compact else 0)
        if not compact:
            mrope = sequence.decode_positions(step, state, width, None, mrope=True)
            assert int(mrope[0, row, 0]) == int(mask[row].sum())
