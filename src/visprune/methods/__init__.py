"""Selection methods: dataclasses that validate their hyperparameters and input, then call their
pure core in :mod:`visprune.functional`. Importing registers them."""

# Import order is registration order: the paper methods, the simple baselines, then the
# published pre-LLM baselines.
# isort: off
from ..functional.rediprune import match_query_width, pool_text_queries, pool_text_query
from .base import Method
from .budget import resolve_budget
from .context import Context
from .divprune import DivPrune
from .otprune import OTPrune
from .rediprune import ReDiPrune
from .resprune import ResPrune
from .trimtokenator import TrimTokenator
from .simple import KeepAll, Random, Uniform
from .cdpruner import CDPruner
from .vispruner import VisPruner
from .visionzip import Reduction, VisionZip
from .fastv import FastV
from .pdrop import PyramidDrop
from .dart import DART
# isort: on

__all__ = [
    "DART",
    "CDPruner",
    "Context",
    "DivPrune",
    "FastV",
    "KeepAll",
    "Method",
    "OTPrune",
    "PyramidDrop",
    "Random",
    "ReDiPrune",
    "Reduction",
    "ResPrune",
    "TrimTokenator",
    "Uniform",
    "VisPruner",
    "VisionZip",
    "match_query_width",
    "pool_text_queries",
    "pool_text_query",
    "resolve_budget",
]
