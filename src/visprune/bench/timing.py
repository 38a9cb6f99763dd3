"""Timers of :func:`visprune.bench.measure`: marks on the device's clock, summed intervals, a
method wrapped in place to time its calls, and ``generate`` with its decode time per token."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


class Clock:
    """Interval timer: CUDA events on a CUDA device, ``perf_counter`` otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds between two marks; call after the work is done (synchronizes on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0
        return end - start


class Intervals:
    """Collects (start, end) marks of repeated intervals; ``total()`` sums them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.marks: list[tuple[Any, Any]] = []
        self._open: list[Any] = []

    def start(self) -> None:
        self._open.append(self.clock.mark())

    def stop(self) -> None:
        if self._open:
            self.marks.append((self._open.pop(), self.clock.mark()))

    def reset(self) -> None:
        self.marks.clear()
        self._open.clear()

    def total(self) -> float:
        return sum(self.clock.seconds(a, b) for a, b in self.marks)


def time_calls(owner: Any, name: str, intervals: Intervals) -> None:
    """Replace ``owner.name`` (a bound method) by a wrapper that times every call in
    ``intervals``; the instance attribute shadows the method until it is deleted."""
    original: Callable = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        intervals.start()
        try:
            return original(*args, **kwargs)
        finally:
            intervals.stop()

    setattr(owner, name, timed)


class GenerateTimer:
    """Times ``model.generate`` on fixed inputs, greedy unless ``generate_kwargs`` say otherwise.

    A forward pre-hook on the language model (:meth:`hook`) marks the start of each of its
    calls, so one call gives both the wall time and the decode time per token.
    """

    def __init__(
        self, model: Any, inputs: dict, clock: Clock, generate_kwargs: dict | None
    ) -> None:
        self.model, self.inputs, self.clock = model, inputs, clock
        self.kwargs = {"do_sample": False, **(generate_kwargs or {})}
        for key in ("max_new_tokens", "min_new_tokens"):
            self.kwargs.pop(key, None)
        self.step_starts: list[Any] = []

    def hook(self) -> Any:
        """Register the language model's pre-hook that marks each step; returns its handle."""
        return self.model.model.language_model.register_forward_pre_hook(
            lambda *_: self.step_starts.append(self.clock.mark())
        )

    def __call__(self, n: int) -> tuple[float, float]:
        """Wall time of one generate call, and its decode time per token: from the start of
        the first decode step (the language model's second call) to the end, over n - 1."""
        self.step_starts.clear()
        start = self.clock.mark()
        self.model.generate(**self.inputs, max_new_tokens=n, min_new_tokens=n, **self.kwargs)
        end = self.clock.mark()
        per_token = 0.0
        if n > 1 and len(self.step_starts) >= 2:
            per_token = self.clock.seconds(self.step_starts[1], end) / (n - 1)
        return self.clock.seconds(start, end), per_token
