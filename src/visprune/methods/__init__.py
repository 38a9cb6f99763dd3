"""Selection methods: pure torch, tensors in, indices out. Importing registers them."""

# Import order is registration order: the paper methods, then the baselines.
# isort: off
from .base import Context, Method, resolve_budget
from .divprune import DivPrune
from .otprune import OTPrune
from .rediprune import ReDiPrune, match_query_width, pool_text_query
from .resprune import ResPrune
from .trimtokenator import TrimTokenator
from .simple import KeepAll, Random, Uniform
from .fastv import FastV
from .pdrop import PyramidDrop
from .dart import DART
# isort: on

__all__ = [
    "DART",
    "Context",
    "DivPrune",
    "FastV",
    "KeepAll",
    "Method",
    "OTPrune",
    "PyramidDrop",
    "Random",
    "ReDiPrune",
    "ResPrune",
    "TrimTokenator",
    "Uniform",
    "match_query_width",
    "pool_text_query",
    "resolve_budget",
]
