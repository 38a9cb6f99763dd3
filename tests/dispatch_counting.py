"""The dispatch counter of the tests: :mod:`visprune.dispatch`, which the benchmarks use too."""

from visprune.dispatch import DispatchCounts

__all__ = ["DispatchCounts"]
