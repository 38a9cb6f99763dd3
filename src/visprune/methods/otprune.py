"""OTPrune: distribution alignment through optimal transport, as a log-det greedy.

"OTPrune: Distribution-Aligned Visual Token Pruning via Optimal Transport", CVPR 2026,
https://arxiv.org/abs/2602.20205
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..functional.otprune import GAMMA, otprune
from ..registry import METHODS
from .base import Method
from .checks import check_param
from .context import Context


@METHODS.register("otprune")
@dataclass
class OTPrune(Method):
    """Optimal-transport alignment relaxed to a monotone submodular log-det objective.

    ``max_{|A| = k} log det(I + γ S Sᵀ)_A`` with ``S = X̃ X̃ᵀ`` on column-normalised tokens,
    maximised greedily (fast greedy MAP inference, Chen et al. 2018).

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).
    gamma : float
        Kernel scale ``γ`` (paper: 0.01).

    Notes
    -----
    Runs on the LLM input embeddings (after the projector). Deliberate differences from the
    published code: the greedy runs in float32 (the published code keeps the Cholesky rows in
    fp16, which changes a few picks), the result is sorted (the published code returns Python set
    order), and on a CPU the ``n x n x n`` product is never formed: only the pivot rows of ``K``
    are computed (on a GPU ``K`` is one batched GEMM, and knowing which rows are cached would
    cost a host sync per pick; :func:`visprune.functional.otprune`).
    Paper: https://arxiv.org/abs/2602.20205
    """

    gamma: float = GAMMA

    name: ClassVar[str] = "otprune"
    stage: ClassVar[str] = "llm"

    def __post_init__(self) -> None:
        check_param(self.name, "gamma", self.gamma, low=0.0, strict=True)

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        return otprune(tokens, k, self.gamma, sort=False)
