"""Count the ops a call dispatches and the host syncs among them.

On a GPU every dispatched op is a kernel launch, and every host sync (a Python value read from a
device tensor) stalls the host until the stream drains. Both are visible on the CPU through
torch's dispatch modes, so the counts are exact and deterministic here and hold on any device:
they tell what a pruned ``generate`` will cost a GPU in launches and stalls before it meets one.

Usage::

    from visprune.dispatch import DispatchCounts

    with DispatchCounts() as counts:
        visprune.select("divprune", tokens, 64)
    counts.ops, counts.syncs, counts.sync_ops
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: Ops that read a device value on the host, so the host waits for the device.
ALWAYS_SYNC = {
    # .item(), int(t), float(t), bool(t), t.__index__(): one value copied to the host.
    aten._local_scalar_dense.default,
    # bool(t) on a one-element tensor, where it is not decomposed into _local_scalar_dense.
    aten.is_nonzero.default,
    # Return a Python bool computed on the device.
    aten.equal.default,
    aten.allclose.default,
    # The output size depends on the values: the host must learn it before allocating.
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
    aten._unique.default,
    aten._unique2.default,
    aten.bincount.default,
    aten.repeat_interleave.Tensor,
}

#: Ops that sync only for some arguments (see :func:`_syncs`).
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
COPIES = {aten._to_copy.default, aten.copy_.default}

#: Tensor methods that read device values on the host without dispatching any op.
UNDISPATCHED_READS = {"tolist", "numpy", "__array__"}


def _syncs(func, args, kwargs) -> bool:
    if func in ALWAYS_SYNC:
        return True
    if func in INDEXING:
        # A boolean mask index is turned into positions with a nonzero inside the kernel.
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(
            index is not None and index.dtype in (torch.bool, torch.uint8) for index in indices
        )
    if func in COPIES:
        # A device-to-host copy (.cpu(), .to("cpu")); never taken on a CPU-only run.
        if func is aten.copy_.default:
            destination, source = args[0], args[1]
            return destination.device.type == "cpu" and source.device.type != "cpu"
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and args[0].is_cuda
    return False


class _OpCounter(TorchDispatchMode):
    def __init__(self, counts: DispatchCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.counts.ops += 1
        if _syncs(func, args, kwargs):
            self.counts.sync_ops[str(func)] += 1
        return func(*args, **kwargs)


class _ReadCounter(TorchFunctionMode):
    def __init__(self, counts: DispatchCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in UNDISPATCHED_READS:
            self.counts.sync_ops[f"Tensor.{name}"] += 1
        elif name == "cpu" and args and args[0].device.type == "cpu":
            # A no-op here, a device-to-host copy where the tensor lives on a GPU (there the
            # copy op is dispatched and counted by the op counter instead).
            self.counts.sync_ops["Tensor.cpu"] += 1
        return func(*args, **(kwargs or {}))


class DispatchCounts:
    """A context manager counting dispatched ops and host syncs inside its block.

    Attributes
    ----------
    ops : int
        Ops dispatched to a kernel (each a launch on a GPU).
    sync_ops : Counter
        Host syncs by op name.
    """

    def __init__(self) -> None:
        self.ops = 0
        self.sync_ops: Counter[str] = Counter()
        self._modes = (_ReadCounter(self), _OpCounter(self))

    @property
    def syncs(self) -> int:
        """Host syncs in all."""
        return sum(self.sync_ops.values())

    def __enter__(self) -> DispatchCounts:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc_info)
