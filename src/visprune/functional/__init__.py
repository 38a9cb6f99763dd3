"""Pure tensor cores of the selection methods, for integrators (torch's ``nn.functional`` split).

Each takes the layouts of the published code (leading batch dimension ``B``) and returns sorted
int64 indices; the ``Method`` classes and the adapters call them. No model code is imported.
"""

from .cdpruner import cdpruner
from .dart import dart
from .visionzip import visionzip
from .vispruner import vispruner

__all__ = ["cdpruner", "dart", "visionzip", "vispruner"]
