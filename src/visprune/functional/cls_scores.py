"""The CLS query's attention row and the head-averaged keys of one vision-encoder layer, from its
query and key projections: what VisPruner and VisionZip read from a CLIP tower.

Recomputed from the projections so that the tower keeps its own attention kernel (no attention
weights requested). Used by ``visprune.apply``'s hooks and by the vLLM plugin (whose projections
come from a merged, tensor-parallel ``qkv_proj``), so both score the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cls_scores(queries: Tensor, keys: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``softmax(q_cls kᵀ · scale)`` per head, and the keys averaged over heads, in float32.

    Parameters
    ----------
    queries : Tensor
        ``(B, 1, H, hd)`` the CLS token's query projection (token 0), split into ``H`` heads.
    keys : Tensor
        ``(B, T, H, hd)`` the key projections of all ``T`` tokens (CLS at 0).
    scale : float
        The attention scale (``hd ** -0.5`` for CLIP).

    Returns
    -------
    cls_attention : Tensor
        ``(B, H, T)`` float32, the CLS query's attention row per head (CLS column included).
    mean_keys : Tensor
        ``(B, T, hd)`` float32, the keys averaged over heads.

    Notes
    -----
    VisPruner (Zhang et al., arXiv 2412.01818) and VisionZip (Yang et al., arXiv 2412.04467) read
    both at the selected vision layer.
    """
    if queries.dim() != 4 or keys.dim() != 4 or queries.shape[1] != 1:
        raise ValueError(
            f"cls_scores: queries must be (B, 1, H, hd) and keys (B, T, H, hd), got "
            f"{tuple(queries.shape)} and {tuple(keys.shape)}."
        )
    if queries.shape[0] != keys.shape[0] or queries.shape[2:] != keys.shape[2:]:
        raise ValueError(
            f"cls_scores: queries {tuple(queries.shape)} and keys {tuple(keys.shape)} differ in "
            "batch, heads or head width."
        )
    queries, keys = queries.float(), keys.float()
    logits = torch.einsum("bqhd,bthd->bht", queries, keys) * float(scale)
    return logits.softmax(dim=-1), keys.mean(dim=2)
