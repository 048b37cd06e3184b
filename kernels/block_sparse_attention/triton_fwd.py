# ruff: noqa: N803, E741  (Triton convention: pointer and constexpr arguments are UPPER_CASE)
"""Triton forward kernel for block-sparse attention over a compacted per-row block index list.

Each program owns one query block of one (batch, head). It walks only the key blocks listed for
its row (so the cost scales with density): first the blocks that need no element mask, then the
ones that do (causal diagonal, ragged tail, streaming windows). Streaming heads (``HEAD_TYPE == 1``)
derive their sink + local block range arithmetically in the same launch. GQA maps query head ``h``
to key/value head ``h // GROUP`` without repeating K/V.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.block_sparse_attention.index import BlockIndex

LOG2E = 1.4426950408889634


@triton.jit
def _attn_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    idx_base,
    it_lo,
    it_hi,
    stream,
    n_sink,
    first_local,
    q_pos,
    offs_n,
    offs_d,
    qk_scale,
    stride_kt,
    stride_vt,
    T_K,
    SINK,
    LOCAL,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_STREAM: tl.constexpr,
    MASKED: tl.constexpr,
):
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    for it in range(it_lo, it_hi):
        if HAS_STREAM:
            kb_list = tl.load(idx_base + it, mask=stream == 0, other=0)
            kb = tl.where(stream != 0, tl.where(it < n_sink, it, first_local + it - n_sink), kb_list)
        else:
            kb = tl.load(idx_base + it)
        for sub in tl.static_range(SUB):
            cols = kb * BLOCK_SIZE + sub * BLOCK_N + offs_n
            if MASKED:
                k = tl.load(
                    k_base + cols[None, :] * stride_kt + offs_d[:, None], mask=cols[None, :] < T_K, other=0.0
                )
                v = tl.load(
                    v_base + cols[:, None] * stride_vt + offs_d[None, :], mask=cols[:, None] < T_K, other=0.0
                )
            else:
                k = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None])
                v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :])
            qk = tl.dot(q, k)
            if MASKED:
                keep = cols[None, :] < T_K
                if CAUSAL:
                    keep = keep & (cols[None, :] <= q_pos[:, None])
                if HAS_STREAM:
                    win = (cols[None, :] < SINK) | (q_pos[:, None] - cols[None, :] < LOCAL)
                    keep = keep & ((stream == 0) | (win & (cols[None, :] <= q_pos[:, None])))
                qk = tl.where(keep, qk * qk_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.math.exp2(qk - m_use[:, None])
                alpha = tl.math.exp2(m_i - m_use)
            else:
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                p = tl.math.exp2(qk * qk_scale - m_new[:, None])
                alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _block_sparse_attn_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    KV_IDX,
    KV_CNT,
    KV_FULL,
    HEAD_TYPE,
    qk_scale,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ob,
    stride_ot,
    stride_oh,
    stride_ib,
    stride_ih,
    stride_im,
    stride_cb,
    stride_ch,
    T_Q,
    T_K,
    N_HEADS,
    GROUP,
    N_QB,
    SINK,
    LOCAL,
    CAUSAL: tl.constexpr,
    HAS_STREAM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    pid_m = N_QB - 1 - tl.program_id(0)  # longest causal rows first
    pid_bh = tl.program_id(1)
    b = pid_bh // N_HEADS
    h = pid_bh % N_HEADS
    hk = h // GROUP
    offs_m = pid_m * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    q = tl.load(
        Q + b64 * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
        mask=offs_m[:, None] < T_Q,
        other=0.0,
    )
    k_base = K + b64 * stride_kb + hk * stride_kh
    v_base = V + b64 * stride_vb + hk * stride_vh
    q_pos = offs_m + (T_K - T_Q)
    q_lo = pid_m * BLOCK_SIZE + (T_K - T_Q)
    q_hi = tl.minimum(pid_m * BLOCK_SIZE + BLOCK_SIZE, T_Q) - 1 + (T_K - T_Q)
    row = b * stride_cb + h * stride_ch + pid_m
    idx_base = KV_IDX + b64 * stride_ib + h * stride_ih + pid_m * stride_im
    n_full = tl.load(KV_FULL + row)
    count = tl.load(KV_CNT + row)
    stream = 0
    n_sink = 0
    first_local = 0
    if HAS_STREAM:
        stream = tl.load(HEAD_TYPE + h)
        last = q_hi // BLOCK_SIZE
        n_sink_s = tl.minimum(tl.cdiv(SINK, BLOCK_SIZE), last + 1)
        first_local_s = tl.maximum(tl.maximum(q_lo - LOCAL + 1, 0) // BLOCK_SIZE, n_sink_s)
        count_s = n_sink_s + tl.maximum(last - first_local_s + 1, 0)
        n_sink = tl.where(stream != 0, n_sink_s, 0)
        first_local = tl.where(stream != 0, first_local_s, 0)
        count = tl.where(stream != 0, count_s, count)
        n_full = tl.where(stream != 0, 0, n_full)
    m_i = tl.full([BLOCK_SIZE], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_SIZE], tl.float32)
    acc = tl.zeros([BLOCK_SIZE, HEAD_DIM], tl.float32)
    acc, l_i, m_i = _attn_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        idx_base,
        0,
        n_full,
        stream,
        n_sink,
        first_local,
        q_pos,
        offs_n,
        offs_d,
        qk_scale,
        stride_kt,
        stride_vt,
        T_K,
        SINK,
        LOCAL,
        BLOCK_SIZE,
        BLOCK_N,
        CAUSAL,
        HAS_STREAM,
        False,
    )
    acc, l_i, m_i = _attn_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        idx_base,
        n_full,
        count,
        stream,
        n_sink,
        first_local,
        q_pos,
        offs_n,
        offs_d,
        qk_scale,
        stride_kt,
        stride_vt,
        T_K,
        SINK,
        LOCAL,
        BLOCK_SIZE,
        BLOCK_N,
        CAUSAL,
        HAS_STREAM,
        True,
    )
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(
        O + b64 * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=offs_m[:, None] < T_Q,
    )
    if STORE_LSE:  # for the backward: each row's log2-sum-exp2 (inf where it kept nothing)
        lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.math.log2(l_safe))
        tl.store(LSE + pid_bh.to(tl.int64) * T_Q + offs_m, lse, mask=offs_m < T_Q)


def default_config(block_size: int, head_dim: int, dtype: torch.dtype) -> dict[str, int]:
    """Launch config per shape (measured on H100, see bench/notes/kernels.md)."""
    if block_size == 64:
        return {"block_n": 64, "num_warps": 4, "num_stages": 3}
    if dtype == torch.float32:
        return {"block_n": 32, "num_warps": 8, "num_stages": 2}
    return {"block_n": 128, "num_warps": 8, "num_stages": 3}


def block_sparse_attn_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: BlockIndex,
    *,
    block_size: int,
    scale: float,
    causal: bool,
    head_type: Tensor | None = None,
    sink: int = 0,
    local: int = 0,
    config: dict[str, int] | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Launch the forward kernel (inputs validated by ``op.block_sparse_attn``); returns `(B, Tq, Hq, D)`.

    ``return_lse``: also each query row's log-sum-exp in log2 units, `(B, Hq, Tq)` float32 (the backward's
    input).
    """
    b, t_q, h_q, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    n_qb = triton.cdiv(t_q, block_size)
    cfg = {**default_config(block_size, d, q.dtype), **(config or {})}
    block_n = min(cfg["block_n"], block_size)
    o = torch.empty_like(q)
    lse = torch.empty(b, h_q, t_q, dtype=torch.float32, device=q.device) if return_lse else o
    has_stream = head_type is not None
    ht = head_type.to(device=q.device, dtype=torch.int32).contiguous() if has_stream else index.cnt
    idx = index.idx
    grid = (n_qb, b * h_q)
    _block_sparse_attn_fwd_kernel[grid](
        q,
        k,
        v,
        o,
        lse,
        idx,
        index.cnt,
        index.n_full,
        ht,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        o.stride(0),
        o.stride(1),
        o.stride(2),
        idx.stride(0),
        idx.stride(1),
        idx.stride(2),
        index.cnt.stride(0),
        index.cnt.stride(1),
        t_q,
        t_k,
        h_q,
        h_q // h_kv,
        n_qb,
        sink,
        local,
        CAUSAL=causal,
        HAS_STREAM=has_stream,
        BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        HEAD_DIM=d,
        STORE_LSE=return_lse,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return (o, lse) if return_lse else o
