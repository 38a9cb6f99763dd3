"""The machine and versions a measurement ran on."""

from __future__ import annotations

import platform

import torch


def machine_description() -> str:
    """CPU model (or platform), torch threads and versions: the header of a results file."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # The vector instructions torch's CPU kernels use (AVX2, AVX512 ...): CPUs of one name
    # differ in them, and fast GEMM changes which share of a selection is per-pick overhead.
    capability = torch.backends.cpu.get_cpu_capability()
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({capability}){gpu}; {torch.get_num_threads()} torch threads; Python "
        f"{platform.python_version()}; torch {torch.__version__}; {platform.system()} "
        f"{platform.release()}"
    )


def versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {
        "visprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
