"""Selection never waits for the device once per pick.

On a GPU each host sync (``.item()``, ``bool(t)``, ``nonzero`` ...) stalls the host until the
stream drains, so a greedy loop that syncs per pick costs ``k`` stalls. The counts come from
torch's dispatch modes on the CPU (:mod:`dispatch_counting`); they are exact and the same on any
device, so pinning them here keeps the GPU path sync-free without a GPU.
"""

from __future__ import annotations

import pytest
import torch

import visprune
import visprune.functional.logdet as otprune
from conftest import (
    METHOD_NAMES,
    NO_BUDGET,
    cls_attention_of,
    layer_kwargs,
    make_text,
    make_tokens,
    needs_cls_attention,
    run,
    text_kwargs,
    uses_text,
)
from dispatch_counting import DispatchCounts
from visprune.functional.logdet import logdet_greedy
from visprune.functional.otprune import column_normalise

BUDGETED = [name for name in METHOD_NAMES if name not in NO_BUDGET]

#: Dispatched ops a greedy pick may add (a kernel launch each on a GPU): the fused Cholesky or
#: distance update of a step, never chains of views, indexing and in-place updates.
OPS_PER_PICK = 12


@pytest.fixture(autouse=True)
def device_kernel_path(monkeypatch):
    """OTPrune's CUDA path: a host read costs nothing on a CPU, so the CPU keeps its lazy rows."""
    monkeypatch.setattr(otprune, "LAZY_ROW_DEVICES", frozenset())


def counted(name: str, shape: tuple[int, ...], k: int, shared: bool = False) -> DispatchCounts:
    """The dispatched ops and host syncs of one ``visprune.select`` call."""
    batch = shape[0] if len(shape) == 3 else None
    tokens = make_tokens(shape, seed=sum(shape))
    extra = text_kwargs(name, shape[-1], batch, shared=shared)
    with DispatchCounts() as counts:
        run(name, tokens, k, **extra)
    return counts


def host_syncs(name: str, shape: tuple[int, ...], k: int, shared: bool = False) -> dict[str, int]:
    """Host syncs of one ``visprune.select`` call, by op."""
    return dict(counted(name, shape, k, shared).sync_ops)


def test_the_counter_sees_each_kind_of_host_read():
    """Every way of reading a device value counts once; device-side arithmetic counts none."""
    x = torch.arange(6.0)
    reads = [
        lambda: bool(x[0] > 0),
        lambda: x.sum().item(),
        lambda: int(x.argmax()),
        lambda: x.tolist(),
        lambda: x.nonzero(),
        lambda: x[x > 2],
        lambda: torch.equal(x, x),
    ]
    for read in reads:
        with DispatchCounts() as counts:
            read()
        assert counts.syncs == 1, counts.sync_ops
    with DispatchCounts() as counts:
        torch.where(x > 2, x, x.neg()).argmax().unsqueeze(0).mul_(2)
    assert counts.syncs == 0 and counts.ops == 6, counts.ops


@pytest.mark.parametrize("d", [12, 48])
@pytest.mark.parametrize("name", BUDGETED)
def test_no_host_sync_per_pick(name, d):
    """The host syncs of a call do not grow with the budget.

    ``d = 12`` makes ResPrune keep feature-space residuals and exhaust the span (rank 12 < k),
    ``d = 48`` keeps its Gram form.
    """
    assert host_syncs(name, (64, d), 8) == host_syncs(name, (64, d), 16)


@pytest.mark.parametrize("shared", [False, True], ids=["text-per-item", "shared-text"])
@pytest.mark.parametrize("name", BUDGETED)
def test_no_host_sync_per_item(name, shared):
    """The host syncs of a call do not grow with the images (or frames) in the batch."""
    one = host_syncs(name, (1, 64, 24), 8, shared)
    assert host_syncs(name, (4, 64, 24), 8, shared) == one


@pytest.mark.parametrize("name", BUDGETED)
def test_shared_prompt_ops_do_not_grow_with_frames(name):
    """Frames sharing one prompt launch the same ops as one frame: the prompt is read once."""
    one = counted(name, (1, 64, 24), 8, shared=True).ops
    assert counted(name, (4, 64, 24), 8, shared=True).ops == one


def per_item_text_ops(name: str, batch: int, dtype: torch.dtype = torch.float32) -> int:
    """Ops of one ``select`` on ``batch`` items, each with its own prompt (lengths 3 and 5 in
    turn, so the longest prompt is the same for every batch of two or more) in ``dtype``."""
    tokens = make_tokens((batch, 64, 24), seed=batch)
    kwargs = {}
    if uses_text(name):
        kwargs["text"] = [
            make_text(name, 24, rows=3 + 2 * (i % 2), seed=i).to(dtype) for i in range(batch)
        ]
    if needs_cls_attention(name):
        kwargs["cls_attention"] = cls_attention_of(tokens)
    kwargs = layer_kwargs(name, tokens, **kwargs)
    with DispatchCounts() as counts:
        visprune.select(name, tokens, 8, **kwargs)
    return counts.ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", BUDGETED)
def test_per_item_prompts_ops_do_not_grow_with_items(name, dtype):
    """Items with prompts of their own launch the same ops for 2 items as for 4: the texts are
    packed (and converted, for a bfloat16 model's embeddings) as one batch, never item by item."""
    assert per_item_text_ops(name, 4, dtype) == per_item_text_ops(name, 2, dtype)


@pytest.mark.parametrize("name", BUDGETED)
def test_few_ops_per_pick(name):
    """Each further pick launches at most :data:`OPS_PER_PICK` ops (``k = 16`` against ``8``)."""
    per_pick = (counted(name, (64, 48), 16).ops - counted(name, (64, 48), 8).ops) / 8
    assert per_pick <= OPS_PER_PICK


@pytest.mark.parametrize("seed", range(6))
def test_otprune_kernel_paths_pick_the_same(seed):
    """The lazy kernel rows (CPU) and the up-front kernel (CUDA) give the same picks."""
    generator = torch.Generator().manual_seed(seed)
    n, d = [(64, 16), (96, 128), (30, 4)][seed % 3]
    tokens = torch.randn(2, n, d, generator=generator)
    if seed >= 3:  # duplicated tokens: exact ties in the gains
        tokens[:, n // 2 :] = tokens[:, : n - n // 2]
    normalised = column_normalise(tokens)
    similarity = normalised @ normalised.mT
    for k in (1, 7, n // 2, n - 1):
        lazy = logdet_greedy(similarity, 0.01, k, lazy_rows=True)
        formed = logdet_greedy(similarity, 0.01, k, lazy_rows=False)
        assert torch.equal(lazy, formed), (k, lazy.tolist(), formed.tolist())
