"""visprune: training-free visual-token pruning for multimodal LLMs.

>>> import visprune
>>> visprune.list_methods()
['divprune', 'otprune', 'rediprune', 'resprune', 'trimtokenator', 'random', 'uniform', 'keepall',
 'cdpruner', 'vispruner', 'visionzip']
"""

from .api import Handle, apply, get_method, list_methods, select
from .methods import (
    CDPruner,
    Context,
    DivPrune,
    KeepAll,
    Method,
    OTPrune,
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
    "METHODS",
    "CDPruner",
    "Context",
    "DivPrune",
    "Handle",
    "KeepAll",
    "Method",
    "OTPrune",
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
