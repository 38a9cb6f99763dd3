"""visprune: training-free visual-token pruning for multimodal LLMs.

Examples
--------
>>> import visprune
>>> visprune.list_methods()[:5]
['divprune', 'otprune', 'rediprune', 'resprune', 'trimtokenator']
"""

from .api import apply, get_method, list_methods, select
from .handle import Handle
from .methods import (
    DART,
    CDPruner,
    Context,
    DivPrune,
    FastV,
    KeepAll,
    Method,
    OTPrune,
    PyramidDrop,
    Random,
    ReDiPrune,
    ResPrune,
    TrimTokenator,
    Uniform,
    VisionZip,
    VisPruner,
)
from .registry import ADAPTERS, METHODS

__version__ = "0.1.0"

__all__ = [
    "ADAPTERS",
    "DART",
    "METHODS",
    "CDPruner",
    "Context",
    "DivPrune",
    "FastV",
    "Handle",
    "KeepAll",
    "Method",
    "OTPrune",
    "PyramidDrop",
    "Random",
    "ReDiPrune",
    "ResPrune",
    "TrimTokenator",
    "Uniform",
    "VisPruner",
    "VisionZip",
    "__version__",
    "apply",
    "get_method",
    "list_methods",
    "select",
]
