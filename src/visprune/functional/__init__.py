"""Pure tensor cores of the selection methods, for integrators (torch's ``nn.functional`` split).

Each core takes tensors and ints and returns int64 indices (ascending; ``sort=False`` gives the
greedy order where there is one) or the tensors its method needs. The ``Method`` classes in
:mod:`visprune.methods` validate the input and call them; the adapters and the vLLM plugin call
them too. No model code is imported here, and nothing from :mod:`visprune.methods`.

- :func:`divprune`: max-min cosine diversity (DivPrune).
- :func:`otprune`: the log-det greedy of the optimal-transport kernel (OTPrune).
- :func:`rediprune`: prompt relevance plus max-min diversity (ReDiPrune), with its query
  pooling :func:`pool_text_queries` / :func:`pool_text_query` and :func:`match_query_width`.
- :func:`resprune`: relevance-weighted residual-energy reconstruction (ResPrune).
- :func:`trimtokenator`: prompt alignment, then representative-diverse RepMax (TrimTokenator).
- :func:`cdpruner`: the relevance-weighted conditional DPP (CDPruner), published layout.
- :func:`vispruner`: CLS-attention tokens, then diverse ones (VisPruner), published layout.
- :func:`visionzip`: dominant tokens plus merged contextual ones (VisionZip), published layout.
- :func:`dart`: pivots by key norm, then the least duplicated tokens (DART), published count.
- :func:`cls_scores`: a CLIP layer's CLS attention row and head-mean keys (VisPruner,
  VisionZip).

The first five take ``(b, n, d)`` float32 tokens; the published-layout cores take the tensors
of the published code (leading batch dimension ``B``).
"""

from .cdpruner import cdpruner
from .cls_scores import cls_scores
from .dart import dart
from .divprune import divprune
from .otprune import otprune
from .rediprune import match_query_width, pool_text_queries, pool_text_query, rediprune
from .resprune import resprune
from .trimtokenator import trimtokenator
from .visionzip import visionzip
from .vispruner import vispruner

__all__ = [
    "cdpruner",
    "cls_scores",
    "dart",
    "divprune",
    "match_query_width",
    "otprune",
    "pool_text_queries",
    "pool_text_query",
    "rediprune",
    "resprune",
    "trimtokenator",
    "visionzip",
    "vispruner",
]
