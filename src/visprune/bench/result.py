"""What :func:`visprune.bench.measure` returns, and its readable summary."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stat:
    """Median and spread of one timing over the repeats, in seconds."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        return cls(statistics.median(samples), min(samples), max(samples), tuple(samples))

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "samples": list(self.samples),
        }


@dataclass
class BenchResult:
    """One :func:`measure` run. See :mod:`visprune.bench` for how each field is measured."""

    method: str
    params: dict[str, Any]
    device: str
    new_tokens: int
    repeats: int
    warmup: int
    prefill_s: Stat
    decode_s_per_token: Stat
    vision_s: Stat
    select_s: Stat | None
    peak_memory_bytes: int | None
    kv_cache_bytes: int
    kv_cache_length: int
    visual_tokens_before: int
    visual_tokens_after: int
    flops: dict[str, Any]
    versions: dict[str, str] = field(default_factory=dict)
    alignment: dict[str, float] | None = None
    #: The torch.compile mode the selection ran under, or ``None`` (eager).
    compile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Stat) else value
        return out

    def ratio_to(self, other: BenchResult) -> dict[str, float | None]:
        """Speed-ups and savings of ``self`` relative to ``other`` (typically the unpruned run):
        ``other / self`` for times and sizes, so values above 1 mean ``self`` is cheaper."""

        def ratio(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None or b == 0 else a / b

        return {
            "prefill_speedup": ratio(other.prefill_s.median, self.prefill_s.median),
            "decode_speedup": ratio(
                other.decode_s_per_token.median, self.decode_s_per_token.median
            ),
            "kv_cache_reduction": ratio(other.kv_cache_bytes, self.kv_cache_bytes),
            "prefill_flops_reduction": ratio(
                other.flops.get("prefill_total"), self.flops.get("prefill_total")
            ),
            "visual_token_reduction": ratio(other.visual_tokens_after, self.visual_tokens_after),
        }


def _alignment_text(alignment: dict[str, float] | None) -> str:
    if not alignment:
        return "- (unpruned)"
    return ", ".join(f"{key} {value:.4f}" for key, value in alignment.items())


def format_table(result: BenchResult) -> str:
    """A readable two-column summary of a :class:`BenchResult`."""

    def ms(stat: Stat | None) -> str:
        if stat is None:
            return "-"
        return f"{stat.median * 1e3:.2f} ms  [{stat.min * 1e3:.2f} .. {stat.max * 1e3:.2f}]"

    params = ", ".join(f"{k}={v!r}" for k, v in result.params.items()) or "-"
    peak = (
        "-" if result.peak_memory_bytes is None else f"{result.peak_memory_bytes / 2**20:.1f} MiB"
    )
    rows = [
        ("method", f"{result.method} ({params})"),
        ("device", result.device),
        ("visual tokens", f"{result.visual_tokens_before} -> {result.visual_tokens_after}"),
        ("time to first token", ms(result.prefill_s)),
        ("decode / token", ms(result.decode_s_per_token)),
        ("vision tower", ms(result.vision_s)),
        (
            "selection",
            ms(result.select_s) + (f"  compiled: {result.compile}" if result.compile else ""),
        ),
        ("KV cache", f"{result.kv_cache_bytes / 2**20:.3f} MiB ({result.kv_cache_length} pos)"),
        ("peak memory", peak if result.peak_memory_bytes is not None else "- (CPU)"),
        ("prefill GFLOPs", f"{result.flops['prefill_total'] / 1e9:.3f}"),
        ("alignment", _alignment_text(result.alignment)),
        ("decode GFLOPs", f"{result.flops['decode_total'] / 1e9:.3f}"),
        ("repeats", f"{result.repeats} (+{result.warmup} warm-up), {result.new_tokens} tokens"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
