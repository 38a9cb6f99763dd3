"""VisionZip's pure core: dominant tokens by CLS attention, the rest merged into contextual ones.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models"
(CVPR 2025, arXiv 2412.04467).
"""

from __future__ import annotations

import torch
from torch import Tensor


def visionzip(
    cls_attention: Tensor, hidden_states: Tensor, keys: Tensor, dominant: int, contextual: int
) -> tuple[Tensor, Tensor]:
    """Keep ``dominant`` tokens (CLS included) and merge the others into ``contextual`` tokens.

    Dominant: CLS plus the ``dominant - 1`` patches with the most CLS attention (summed over
    heads). Contextual: of the ``R`` remaining tokens (ascending), every ``max(1, R //
    contextual)``-th is a target; every other remaining token joins the target whose key is most
    cosine-similar (ties: the first target); ``merged_j = h_target_j + mean(h of its members)``
    (the target itself is not in the mean; a target without members keeps its own state).

    Parameters
    ----------
    cls_attention : Tensor
        ``(B, H, T)`` the CLS query's attention row at the selected vision layer (``T = n + 1``,
        CLS at 0; only columns ``1:`` are read).
    hidden_states : Tensor
        ``(B, T, D)`` that layer's output hidden states.
    keys : Tensor
        ``(B, T, hd)`` that layer's key projections averaged over heads.
    dominant : int
        Dominant tokens kept by CLS attention, ``1 <= dominant <= T``.
    contextual : int
        Contextual tokens merged from the rest, ``1 <= contextual <= T - dominant``.

    Returns
    -------
    indices : Tensor
        ``(B, dominant)`` int64, ascending, 0 (CLS) first.
    merged : Tensor
        ``(B, contextual, D)`` the contextual tokens in target order, in the hidden states' dtype.
    """
    b, t, width = hidden_states.shape
    if not 1 <= dominant <= t or not 1 <= contextual <= t - dominant:
        raise ValueError(
            f"visionzip: need 1 <= dominant <= {t} and 1 <= contextual <= {t} - dominant, got "
            f"dominant={dominant}, contextual={contextual}."
        )
    device = hidden_states.device
    scores = cls_attention[:, :, 1:].sum(dim=1)  # (B, n)
    # A stable sort, not topk: equal attention keeps the lower index (the tie rule of
    # docs/methods/index.md).
    top = scores.argsort(dim=-1, descending=True, stable=True)[:, : dominant - 1] + 1
    chosen = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=device), top], dim=-1)
    is_dominant = torch.zeros(b, t, dtype=torch.bool, device=device)
    is_dominant.scatter_(1, chosen, True)
    order = torch.arange(t, device=device).expand(b, t)
    indices = order[is_dominant].view(b, dominant)
    remaining = order[~is_dominant].view(b, t - dominant)
    count = remaining.shape[1]
    hidden = hidden_states.gather(1, remaining.unsqueeze(-1).expand(-1, -1, width))
    metric = keys.gather(1, remaining.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))
    metric = metric / metric.norm(dim=-1, keepdim=True)
    step = max(1, count // contextual)
    targets = torch.arange(0, count, step, device=device)[:contextual]
    is_target = torch.zeros(count, dtype=torch.bool, device=device)
    is_target[targets] = True
    similarity = metric[:, ~is_target] @ metric[:, targets].mT  # (B, R - c, c)
    assignment = similarity.argmax(dim=-1)
    one_hot = torch.zeros_like(similarity, dtype=hidden.dtype).scatter_(2, assignment[..., None], 1)
    counts = one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)  # (B, c, 1)
    aggregated = (one_hot.mT @ hidden[:, ~is_target]) / counts
    merged = hidden[:, targets] + aggregated
    return indices, merged
