"""Plain-PyTorch block-sparse attention (fp32 inside): the oracle for the Triton kernel."""

from __future__ import annotations

import math

import torch
from torch import Tensor

HEAD_MASKED = 0  # the head follows its block mask (dense or XAttention-selected blocks)
HEAD_STREAMING = 1  # the head attends to the first `sink` keys and the last `local` keys only


def token_mask(
    block_mask: Tensor,
    t_q: int,
    t_k: int,
    block_size: int,
    *,
    causal: bool,
    head_type: Tensor | None = None,
    sink: int = 0,
    local: int = 0,
) -> Tensor:
    """Expand a block mask (plus causal and streaming-head rules) to a `(B, H, Tq, Tk)` bool mask.

    Queries sit at the end of the keys: query ``i`` has position ``i + Tk - Tq``. Causal keeps key
    ``j`` iff ``j <= pos(i)``. A streaming head (``head_type[h] == HEAD_STREAMING``) ignores its block
    mask and keeps ``j < sink`` or ``pos(i) - j < local`` (always causal).
    """
    m = block_mask.repeat_interleave(block_size, dim=2).repeat_interleave(block_size, dim=3)[..., :t_q, :t_k]
    dev = block_mask.device
    pos_q = torch.arange(t_q, device=dev)[:, None] + (t_k - t_q)
    pos_k = torch.arange(t_k, device=dev)[None, :]
    if causal:
        m = m & (pos_k <= pos_q)
    if head_type is not None and bool((head_type == HEAD_STREAMING).any()):
        stream = ((pos_k < sink) | (pos_q - pos_k < local)) & (pos_k <= pos_q)
        is_stream = (head_type == HEAD_STREAMING).to(dev)[None, :, None, None]
        m = torch.where(is_stream, stream[None, None], m)
    return m


def block_sparse_attn_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: Tensor,
    *,
    block_size: int = 128,
    scale: float | None = None,
    causal: bool = False,
    head_type: Tensor | None = None,
    sink: int = 0,
    local: int = 0,
) -> Tensor:
    """Block-sparse softmax attention, ``O = softmax(Q Kᵀ · scale + log M) V`` with ``M`` the token mask.

    ``M`` is ``block_mask`` expanded to tokens (``block_size`` × ``block_size`` squares), intersected
    with the causal rule and replaced by sink + local windows on streaming heads (:func:`token_mask`);
    this is Eq. 1 of XAttention (Xu et al., 2025) with its block mask. Rows with no allowed key
    output zeros.

    Args:
        q: `(B, Tq, Hq, D)` queries.
        k: `(B, Tk, Hkv, D)` keys, ``Hq % Hkv == 0`` (grouped-query attention).
        v: `(B, Tk, Hkv, D)` values.
        block_mask: `(B, Hq, ceil(Tq/block_size), ceil(Tk/block_size))` bool, True = compute block.
        block_size: query and key block size in tokens.
        scale: softmax scale, default ``D ** -0.5``.
        causal: apply the causal rule (queries aligned to the end of the keys).
        head_type: optional `(Hq,)` int, ``HEAD_MASKED`` or ``HEAD_STREAMING`` per head.
        sink: sink tokens of streaming heads.
        local: local window (tokens, the query's own position included) of streaming heads.

    Returns:
        `(B, Tq, Hq, D)` output in ``q``'s dtype.
    """
    _, t_q, h_q, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    mask = token_mask(
        block_mask, t_q, t_k, block_size, causal=causal, head_type=head_type, sink=sink, local=local
    )
    qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    kf = kf.repeat_interleave(h_q // h_kv, dim=1)
    vf = vf.repeat_interleave(h_q // h_kv, dim=1)
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, -math.inf)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # all-masked rows -> 0
    return (p @ vf).transpose(1, 2).to(q.dtype)
