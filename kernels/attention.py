"""The one attention entry point every model in the stack calls.

Layout is ``[B, T, H, D]`` (STYLE.md §5). Dense attention goes through PyTorch SDPA; the sparse
prefill kernels (block-sparse, XAttention, streaming heads) plug in behind the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    attn_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Scaled dot-product attention with GQA, in the stack's ``[B, T, H, D]`` layout.

    Args:
        q: `(B, Tq, Hq, D)` queries.
        k: `(B, Tk, Hkv, D)` keys; ``Hq`` must be a multiple of ``Hkv`` (grouped-query attention).
        v: `(B, Tk, Hkv, D)` values.
        causal: mask future keys (queries are aligned to the *end* of the keys, as in KV-cache
            decoding). Ignored when ``attn_mask`` is given.
        attn_mask: optional boolean `(B or 1, 1 or Hq, Tq, Tk)` mask, True = may attend.
        scale: softmax scale, default ``D ** -0.5``.

    Returns:
        `(B, Tq, Hq, D)` output.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects [B, T, H, D] tensors, got q{tuple(q.shape)} k{tuple(k.shape)}")
    hq, hkv = q.shape[2], k.shape[2]
    if hq % hkv != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    if hkv != hq:
        rep = hq // hkv
        kh = kh.repeat_interleave(rep, dim=1)
        vh = vh.repeat_interleave(rep, dim=1)
    tq, tk = q.shape[1], k.shape[1]
    if attn_mask is None and causal and tq > 1:
        # Queries sit at the end of the key sequence (prefill: tq == tk; chunked decode: tq < tk).
        attn_mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, scale=scale)
    return out.transpose(1, 2)  # (B, Tq, Hq, D)
