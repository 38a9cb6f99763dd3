"""``benchmarks/gpu.py`` runs without a GPU: small shapes on the CPU, every table written.

Compiled selection uses torch's graph capture with the graph run as captured (no Inductor code
generation, which takes seconds per shape on a CPU); the CUDA-graph column is CUDA only.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import visprune.compiled as compiled

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_small_run_writes_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    monkeypatch.setattr(compiled, "_CORES", {})
    gpu = load_script()
    out = tmp_path / "gpu.md"
    argv = ["--small", "--methods", "divprune", "random", "--repeats", "1", "--out", str(out)]
    assert gpu.main(argv) == 0
    text = out.read_text()
    assert "small shapes on the CPU" in text and "Machine: " in text
    for method in ("divprune", "random"):
        for k in gpu.BUDGETS:
            rows = re.findall(rf"^\| {method} \| {k} of 576 \|.*$", text, flags=re.M)
            assert len(rows) == 2, (method, k, rows)  # one selection row, one prefill row
    selection = re.search(r"^\| divprune \| 64 of 576 \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
    assert selection, "divprune's compiled selection at 64 is timed"
    assert re.search(r"^\| random \| 64 of 576 \| [\d.]+ \| does not compile", text, re.M)
    assert re.search(r"^\| unpruned \| 576 of 576 \| [\d.]+ \| 1.00x \|", text, re.M)
    added = re.findall(r"^\| (\d) \| (\d+) \| (\d+) \| (\d+) \|$", text, flags=re.M)
    assert [row[0] for row in added] == ["1", "2", "4"]
    assert len({row[3] for row in added}) == 1, "the syncs visprune adds grow with the batch"
