"""Pure tensor cores of the selection methods, for integrators (torch's ``nn.functional`` split).

Each takes the layouts of the published code (leading batch dimension ``B``) and returns sorted
int64 indices; the ``Method`` classes and the adapters call them. No model code is imported.
"""

from .cdpruner import cdpruner
from .cls_scores import cls_scores
from .dart import dart
from .visionzip import visionzip
from .vispruner import vispruner

__all__ = ["cdpruner", "cls_scores", "dart", "visionzip", "vispruner"]
