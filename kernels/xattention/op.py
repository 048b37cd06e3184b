"""Public XAttention ops: block selection (antidiagonal scoring + threshold) and sparse prefill."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from kernels.block_sparse_attention.index import BlockIndex, mask_to_index
from kernels.block_sparse_attention.op import HEAD_STREAMING, block_sparse_attn
from kernels.dispatch import resolve_impl
from kernels.xattention.lowrank import key_subspace, project_qk
from kernels.xattention.reference import check_dense_above, xattn_select_ref

try:
    from kernels.xattention.triton_fwd import xattn_score_fwd, xattn_select_fwd
except ImportError:  # triton missing: reference only
    xattn_score_fwd = xattn_select_fwd = None

SUPPORTED_STRIDES = (1, 2, 4, 8, 16)


def _unsupported(q: Tensor, stride: int, block_size: int) -> str | None:
    if xattn_score_fwd is None:
        return "triton is not importable"
    if block_size not in (64, 128):
        return f"block_size {block_size} not in (64, 128)"
    if stride not in SUPPORTED_STRIDES:
        return f"stride {stride} not in {SUPPORTED_STRIDES}"
    if q.shape[-1] not in (64, 128):
        return f"head dim {q.shape[-1]} not in (64, 128)"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype} not supported"
    return None


def xattn_select(
    q: Tensor,
    k: Tensor,
    *,
    stride: int = 8,
    tau: float = 0.9,
    block_size: int = 128,
    scale: float | None = None,
    causal: bool = True,
    return_mass: bool = False,
    impl: Literal["auto", "triton", "reference"] = "auto",
    config: dict[str, int] | None = None,
    row_share: float = 0.0,
    dense_above: float = 1.0,
    score_rank: int = 0,
    heads: Tensor | None = None,
) -> tuple[BlockIndex, Tensor | None]:
    """Pick the key blocks each query block attends to (XAttention, ``README.md``).

    Args:
        q: `(B, Tq, Hq, D)` queries.
        k: `(B, Tk, Hkv, D)` keys, ``Hq % Hkv == 0``.
        stride: antidiagonal stride (4, 8 or 16 in practice; 1 scores exact attention mass).
        tau: kept share of each query-block row's mass, in (0, 1].
        block_size: block size in tokens (multiple of ``stride``).
        scale: softmax scale, default ``D ** -0.5``.
        causal: causal rule, queries aligned to the end of the keys.
        return_mass: also return the `(B, Hq, NQB, NKB)` block mass.
        impl: ``"auto"``, ``"triton"`` or ``"reference"``.
        config: scoring launch override ``{"block_m", "block_n", "num_warps", "num_stages"}``.
        row_share: also keep a block when one reshaped query row (``stride`` queries) puts at least
            this share of its estimated mass there, in [0, 1]; 0 (default) is XAttention's rule alone.
            Catches needles that a 128-query block dilutes (``README.md``).
        dense_above: dense fallback, in (0, 1]: a query-block row that, after the τ and row rules,
            keeps more than this share of its visible blocks keeps all of them. On diffuse
            attention the estimate ranks blocks poorly and such rows save little compute anyway.
            1.0 (default) is off.
        score_rank: score on the keys' top ``score_rank`` principal directions instead of the whole
            head dimension (``lowrank.py``; 0, the default, is off): the scoring GEMM shrinks by
            ``score_rank / D``. The Triton path takes ranks 64 (of D = 128); the reference any.
        heads: optional 1-D query-head ids to score (distinct, in ``[0, Hq)``); the other heads are
            not scored and keep no block (``cnt`` 0, mass 0). Streaming heads, which attend to
            their sink + local window whatever the index says, need no scoring.

    Returns:
        ``(BlockIndex, mass or None)``: ascending kept-block lists for :func:`block_sparse_attn`,
        over all ``Hq`` heads.
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"xattn_select expects [B, T, H, D] q and k; got q{tuple(q.shape)} k{tuple(k.shape)}"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key heads ({k.shape[2]})")
    if block_size % stride:
        raise ValueError(f"block_size ({block_size}) must be a multiple of stride ({stride})")
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    if not 0.0 <= row_share <= 1.0:
        raise ValueError(f"row_share must be in [0, 1], got {row_share}")
    check_dense_above(dense_above)
    if causal and q.shape[1] > k.shape[1]:
        raise ValueError(f"causal needs Tq <= Tk, got Tq={q.shape[1]}, Tk={k.shape[1]}")
    if not 0 <= score_rank < q.shape[-1]:
        raise ValueError(f"score_rank must be in [0, head dim {q.shape[-1]}) (0 = off), got {score_rank}")
    if heads is not None:
        heads = _check_heads(heads, q.shape[2], q.device)
        if heads.numel() == q.shape[2]:
            heads = None  # every head: the plain path
        elif heads.numel() == 0:
            return _no_blocks(q, k, block_size, return_mass)
    scale = (
        q.shape[-1] ** -0.5 if scale is None else float(scale)
    )  # the full dimension's, also when projected
    if score_rank:
        q, k = project_qk(q, k, key_subspace(k, score_rank))
    which = resolve_impl(impl, q, k, op="xattn_select", unsupported=_unsupported(q, stride, block_size))
    b, t_q, h_q, _ = q.shape
    t_k = k.shape[1]
    if which == "reference":
        qs, ks = q, k
        if heads is not None:  # the scored heads' q and their key heads, one key head each
            qs, ks = q[:, :, heads], k[:, :, heads // (h_q // k.shape[2])]
        mask, mass = xattn_select_ref(
            qs,
            ks,
            stride=stride,
            tau=tau,
            block_size=block_size,
            scale=scale,
            causal=causal,
            row_share=row_share,
            dense_above=dense_above,
        )
        if heads is not None:
            full = mask.new_zeros(b, h_q, *mask.shape[2:])
            full[:, heads] = mask
            mask, full_mass = full, mass.new_zeros(b, h_q, *mass.shape[2:])
            full_mass[:, heads] = mass
            mass = full_mass
        return mask_to_index(mask, t_q, t_k, block_size, causal=causal), (mass if return_mass else None)
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    lse_rb, lse_r = xattn_score_fwd(
        q, k, stride=stride, block_size=block_size, scale=scale, causal=causal, config=config, heads=heads
    )
    index, mass = xattn_select_fwd(
        lse_rb,
        lse_r,
        batch=b,
        heads=h_q if heads is None else heads.numel(),
        t_q=t_q,
        t_k=t_k,
        stride=stride,
        block_size=block_size,
        tau=tau,
        causal=causal,
        return_mass=return_mass,
        row_share=row_share,
        dense_above=dense_above,
    )
    if heads is None:
        return index, mass
    idx = index.idx.new_zeros(b, h_q, *index.idx.shape[2:])
    cnt, n_full = (
        index.cnt.new_zeros(b, h_q, index.cnt.shape[2]),
        index.n_full.new_zeros(b, h_q, index.cnt.shape[2]),
    )
    idx[:, heads], cnt[:, heads], n_full[:, heads] = index.idx, index.cnt, index.n_full
    if mass is not None:
        full_mass = mass.new_zeros(b, h_q, *mass.shape[2:])
        full_mass[:, heads] = mass
        mass = full_mass
    return BlockIndex(idx, cnt, n_full), mass


def _check_heads(heads: Tensor, n_heads: int, device: torch.device) -> Tensor:
    """``heads`` as int32 on ``device``; raises unless 1-D, distinct and in ``[0, n_heads)``.

    Checked on a host copy (one transfer, not one sync per check).
    """
    if heads.dim() != 1 or heads.dtype.is_floating_point or heads.dtype == torch.bool:
        raise ValueError(
            f"heads must be a 1-D integer tensor of query-head ids, got {heads.dtype} {tuple(heads.shape)}"
        )
    host = heads.detach().to("cpu", torch.int64)
    if host.numel() and (int(host.min()) < 0 or int(host.max()) >= n_heads):
        raise ValueError(f"heads {host.tolist()} out of range for {n_heads} query heads")
    if host.unique().numel() != host.numel():
        raise ValueError(f"heads must be distinct, got {host.tolist()}")
    return host.to(device=device, dtype=torch.int32, non_blocking=True)


def _no_blocks(q: Tensor, k: Tensor, block_size: int, return_mass: bool) -> tuple[BlockIndex, Tensor | None]:
    """No head scored: every row keeps nothing."""
    b, t_q, h_q, _ = q.shape
    n_qb, n_kb = -(-t_q // block_size), -(-k.shape[1] // block_size)
    cnt = torch.zeros(b, h_q, n_qb, dtype=torch.int32, device=q.device)
    idx = torch.zeros(b, h_q, n_qb, n_kb, dtype=torch.int32, device=q.device)
    mass = torch.zeros(b, h_q, n_qb, n_kb, dtype=torch.float32, device=q.device) if return_mass else None
    return BlockIndex(idx, cnt, cnt.clone()), mass


def xattention_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    stride: int = 8,
    tau: float = 0.9,
    block_size: int = 128,
    scale: float | None = None,
    causal: bool = True,
    head_type: Tensor | None = None,
    sink: int = 128,
    local: int = 4096,
    fp8_scoring: bool = False,
    impl: Literal["auto", "triton", "reference"] = "auto",
    row_share: float = 0.0,
    dense_above: float = 1.0,
    score_rank: int = 0,
) -> Tensor:
    """XAttention prefill: select blocks, then block-sparse attention (streaming heads in the same launch).

    Args:
        q: `(B, Tq, Hq, D)` queries.
        k: `(B, Tk, Hkv, D)` keys.
        v: `(B, Tk, Hkv, D)` values.
        stride: antidiagonal stride (see :func:`xattn_select`).
        tau: kept mass share per query-block row.
        block_size: block size in tokens.
        scale: softmax scale, default ``D ** -0.5``.
        causal: causal rule, queries aligned to the end of the keys.
        head_type: optional `(Hq,)` int, 1 marks streaming heads (sink + local; not scored).
        sink: sink tokens of streaming heads.
        local: local window of streaming heads in tokens.
        fp8_scoring: score in float8 e4m3 on the Triton path (faster on Hopper; see README).
        impl: ``"auto"``, ``"triton"`` or ``"reference"`` for both stages.
        row_share: row-level keep rule on top of τ (see :func:`xattn_select`).
        dense_above: dense fallback for rows that keep most of their blocks (see :func:`xattn_select`).
        score_rank: score on the keys' principal subspace of this rank (see :func:`xattn_select`).

    Returns:
        `(B, Tq, Hq, D)`.
    """
    heads = None
    if head_type is not None:  # streaming heads ignore the index: score the others only
        heads = (head_type.cpu() != HEAD_STREAMING).nonzero().flatten()  # (Hq,) ints: host is cheaper
    index, _ = xattn_select(
        q,
        k,
        stride=stride,
        tau=tau,
        block_size=block_size,
        scale=scale,
        causal=causal,
        impl=impl,
        config={"fp8": 1} if fp8_scoring else None,
        row_share=row_share,
        dense_above=dense_above,
        score_rank=score_rank,
        heads=heads,
    )
    return block_sparse_attn(
        q,
        k,
        v,
        block_index=index,
        block_size=block_size,
        scale=scale,
        causal=causal,
        head_type=head_type,
        sink=sink,
        local=local,
        impl=impl,
    )
