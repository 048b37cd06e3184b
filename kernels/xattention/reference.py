"""Plain-PyTorch XAttention block scoring and threshold selection (fp32 inside).

XAttention (Xu et al., ICML 2025, Sec. 2.1-2.2): the importance of a (query block, key block)
pair is the softmax mass of its strided antidiagonal sums. With stride ``S``, row ``i`` of the
reshaped queries concatenates ``q[iS + S-1-s]`` over ``s``, column ``j`` of the reshaped keys
concatenates ``k[jS + s]``, so ``(Q_r K_rᵀ)[i, j] = Σ_s q[iS+S-1-s] · k[jS+s]`` is one antidiagonal of
the ``S × S`` cell. Scores are scaled by ``D^-1/2 / S``, causally masked, softmaxed per reshaped row
and summed over the ``(block/S)²`` cells of each block pair.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _pad_to(x: Tensor, length: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, length - x.shape[1])) if x.shape[1] < length else x


def antidiagonal_block_mass_ref(
    q: Tensor,
    k: Tensor,
    *,
    stride: int,
    block_size: int = 128,
    scale: float | None = None,
    causal: bool = True,
    return_row_max: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Block mass from antidiagonal scoring.

    Args:
        q: `(B, Tq, Hq, D)` queries.
        k: `(B, Tk, Hkv, D)` keys, ``Hq % Hkv == 0``.
        stride: antidiagonal stride ``S`` (``block_size % S == 0``; ``S = 1`` gives exact attention mass).
        block_size: block size in tokens.
        scale: softmax scale, default ``D ** -0.5`` (divided by ``S`` inside).
        causal: causal rule at stride granularity: column ``j`` is visible to row ``i`` iff
            ``jS <= iS + Tk - Tq``.

        return_row_max: also return, per block pair, the largest share of one reshaped row's mass
            that falls in the key block (the row-level signal ``row_share`` selects on).

    Returns:
        `(B, Hq, NQB, NKB)` fp32; each valid reshaped row contributes a total mass of 1. With
        ``return_row_max``, ``(mass, row_max)``, both `(B, Hq, NQB, NKB)`.
    """
    if block_size % stride:
        raise ValueError(f"block_size ({block_size}) must be a multiple of stride ({stride})")
    b, t_q, h_q, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    n_qb, n_kb = -(-t_q // block_size), -(-t_k // block_size)
    r = block_size // stride
    qp = _pad_to(q.float(), n_qb * block_size).transpose(1, 2)  # (B, H, Tq_pad, D)
    kp = _pad_to(k.float(), n_kb * block_size).transpose(1, 2).repeat_interleave(h_q // h_kv, dim=1)
    qr = torch.cat(
        [qp[:, :, stride - 1 - s :: stride] for s in range(stride)], dim=-1
    )  # (B, H, Tq_pad/S, S*D)
    kr = torch.cat([kp[:, :, s::stride] for s in range(stride)], dim=-1)
    scores = (qr @ kr.transpose(-1, -2)) * (scale / stride)
    rows = torch.arange(qr.shape[2], device=q.device)
    cols = torch.arange(kr.shape[2], device=q.device)
    allowed = (cols[None, :] * stride < t_k).expand(rows.numel(), -1)
    if causal:
        allowed = allowed & (cols[None, :] * stride <= rows[:, None] * stride + (t_k - t_q))
    scores = scores.masked_fill(~allowed, -math.inf)
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    p = p * (rows * stride < t_q)[:, None].to(p.dtype)
    per_row = p.view(b, h_q, n_qb, r, n_kb, r).sum(dim=5)  # (B, H, NQB, R, NKB)
    mass = per_row.sum(dim=3)
    return (mass, per_row.amax(dim=3)) if return_row_max else mass


def forced_blocks(t_q: int, t_k: int, block_size: int, device: torch.device | str) -> Tensor:
    """`(NQB, NKB)` bool: the first key block and the diagonal block(s) (keys at the row's own positions)."""
    n_qb, n_kb = -(-t_q // block_size), -(-t_k // block_size)
    qb = torch.arange(n_qb, device=device)
    q_lo = qb * block_size + (t_k - t_q)
    q_hi = torch.clamp((qb + 1) * block_size, max=t_q) - 1 + (t_k - t_q)
    kb = torch.arange(n_kb, device=device)[None, :]
    diag = (kb * block_size <= q_hi[:, None]) & (kb * block_size + block_size > q_lo[:, None])
    return diag | (kb == 0)


def check_dense_above(dense_above: float) -> None:
    """Raise a ValueError unless ``0 < dense_above <= 1``."""
    if not 0.0 < dense_above <= 1.0:
        raise ValueError(
            "dense_above must be in (0, 1]: the share of a row's visible blocks above which the row goes "
            f"dense (1.0 turns the fallback off), got {dense_above}"
        )


def select_blocks_ref(
    mass: Tensor,
    tau: float,
    *,
    t_q: int,
    t_k: int,
    block_size: int,
    causal: bool,
    row_max: Tensor | None = None,
    row_share: float = 0.0,
    dense_above: float = 1.0,
) -> Tensor:
    """Threshold selection (XAttention ``find_blocks_chunked``) on `(B, H, NQB, NKB)` block mass.

    Per query-block row: keep the first and diagonal blocks, then add the remaining visible blocks
    in descending mass until the kept mass reaches ``tau`` × the row's total. Blocks tied with the
    last one added are kept too; zero-mass blocks are never added.

    With ``row_share > 0`` (and ``row_max`` from :func:`antidiagonal_block_mass_ref`), a visible
    block is also kept when one reshaped query row of the block puts at least ``row_share`` of its
    mass there. The τ rule bounds the mass a query *block* loses; a few concentrated rows (a needle
    of 16-64 queries inside a 128-query block) can still lose a key block that matters to them
    alone, because the other rows dilute it.

    With ``dense_above < 1``, a row that after both rules keeps more than ``dense_above`` × its
    visible blocks (token-level causal visibility) keeps all of them. On diffuse attention (a
    learned layer 0) the antidiagonal estimate ranks blocks poorly and such rows already need most
    of their blocks: going dense there costs little compute and recovers the mass the ranking
    misses. ``1.0`` (default) is off: the kept count never exceeds the visible count.

    Returns:
        `(B, H, NQB, NKB)` bool block mask.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    if not 0.0 <= row_share <= 1.0:
        raise ValueError(f"row_share must be in [0, 1], got {row_share}")
    check_dense_above(dense_above)
    if row_share > 0 and row_max is None:
        raise ValueError(
            "row_share > 0 needs row_max (from antidiagonal_block_mass_ref(..., return_row_max=True))"
        )
    from kernels.block_sparse_attention.index import visible_blocks

    dev = mass.device
    vis = visible_blocks(t_q, t_k, block_size, causal, dev)
    forced = forced_blocks(t_q, t_k, block_size, dev) & vis
    m = mass.float().masked_fill(~vis, 0.0)
    need = tau * m.sum(-1, keepdim=True) - (m * forced).sum(-1, keepdim=True)
    cand = torch.where(vis & ~forced, m, torch.full_like(m, -1.0))
    srt = torch.sort(cand, dim=-1, descending=True).values
    excl = torch.cumsum(srt.clamp_min(0.0), dim=-1) - srt.clamp_min(0.0)
    n_add = ((excl < need) & (srt >= 0)).sum(-1, keepdim=True)
    cutoff = torch.gather(srt, -1, (n_add - 1).clamp_min(0))
    cutoff = torch.where(n_add > 0, cutoff, torch.full_like(cutoff, math.inf))
    keep = forced | ((cand >= cutoff) & (cand > 0))
    if row_share > 0:
        keep = keep | (vis & (row_max >= row_share) & (row_max > 0))
    if dense_above < 1.0:  # keep is a subset of vis, so the counts compare like the kernel's
        n_kept = keep.sum(-1, keepdim=True, dtype=torch.int32).float()
        n_vis = vis.sum(-1, keepdim=True, dtype=torch.int32).float()
        keep = keep | ((n_kept > dense_above * n_vis) & vis)
    return keep


def xattn_select_ref(
    q: Tensor,
    k: Tensor,
    *,
    stride: int,
    tau: float,
    block_size: int = 128,
    scale: float | None = None,
    causal: bool = True,
    row_share: float = 0.0,
    dense_above: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Antidiagonal scoring then threshold selection. Returns ``(block_mask, block_mass)``.

    ``row_share`` and ``dense_above`` are :func:`select_blocks_ref`'s extra rules.
    """
    mass, row_max = antidiagonal_block_mass_ref(
        q, k, stride=stride, block_size=block_size, scale=scale, causal=causal, return_row_max=True
    )
    mask = select_blocks_ref(
        mass,
        tau,
        t_q=q.shape[1],
        t_k=k.shape[1],
        block_size=block_size,
        causal=causal,
        row_max=row_max,
        row_share=row_share,
        dense_above=dense_above,
    )
    return mask, mass
