"""visprune: training-free visual-token pruning for multimodal LLMs.

>>> import visprune
>>> visprune.list_methods()
['divprune', 'otprune', 'rediprune', 'resprune', 'trimtokenator', 'random', 'uniform', 'keepall']
"""

from .api import Handle, apply, get_method, list_methods, select
from .methods import (
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
)
from .registry import ADAPTERS, METHODS

__version__ = "0.1.0"

__all__ = [
    "ADAPTERS",
    "METHODS",
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
    "__version__",
    "apply",
    "get_method",
    "list_methods",
    "select",
]
