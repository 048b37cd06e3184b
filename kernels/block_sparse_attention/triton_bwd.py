# ruff: noqa: N803  (Triton convention: pointer and constexpr arguments are UPPER_CASE)
"""Triton backward of block-sparse attention (block-mask heads), by recomputation from the forward's LSE.

With ``P = exp(s·q kᵀ - lse)`` rebuilt tile by tile and ``Δ = rowsum(dO ∘ O)``:
``dV = Pᵀ dO``, ``dS = P ∘ (dO Vᵀ - Δ)``, ``dQ = s·dS K``, ``dK = s·dSᵀ Q`` (the standard softmax
gradient; Dao 2023, FlashAttention-2, Alg. 2). Two kernels, no atomics:

- ``dQ``: one program per (query tile, batch, query head) walks the forward's own index list (the key
  blocks its row keeps).
- ``dK, dV``: one program per (key tile, batch, key/value head) walks the *transposed* list, the
  (group head, query block) pairs that keep its key block, so a GQA group's query heads are summed
  inside the program rather than by repeating K/V or by atomics.

Every tile applies the element mask (causal, ragged tails); the forward's mask-free fast path is not
repeated here. Streaming heads (sink + local) walk their own window blocks with the window masked per
element, as in the forward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.block_sparse_attention.index import BlockIndex, index_to_mask, mask_to_index, streaming_blocks
from kernels.block_sparse_attention.reference import HEAD_STREAMING

LOG2E = 1.4426950408889634


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    KV_IDX,
    KV_CNT,
    HEAD_TYPE,
    qk_scale,
    sm_scale,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_ib,
    stride_ih,
    stride_im,
    stride_cb,
    stride_ch,
    T_Q,
    T_K,
    N_HEADS,
    GROUP,
    SINK,
    LOCAL,
    CAUSAL: tl.constexpr,
    HAS_STREAM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    SUB_M: tl.constexpr = BLOCK_SIZE // BLOCK_M
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    qb = pid // SUB_M
    b = pid_bh // N_HEADS
    h = pid_bh % N_HEADS
    hk = h // GROUP
    b64 = b.to(tl.int64)
    offs_m = qb * BLOCK_SIZE + (pid % SUB_M) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T_Q
    # q, dO and dQ share one [B, T, H, D] layout (the wrapper makes them contiguous alike)
    q_ptrs = b64 * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(Q + q_ptrs, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + q_ptrs, mask=row_ok[:, None], other=0.0)
    stat = pid_bh.to(tl.int64) * T_Q + offs_m
    lse = tl.load(LSE + stat, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
    q_pos = offs_m + (T_K - T_Q)
    k_base = K + b64 * stride_kb + hk * stride_kh
    v_base = V + b64 * stride_kb + hk * stride_kh
    idx_base = KV_IDX + b64 * stride_ib + h * stride_ih + qb * stride_im
    count = tl.load(KV_CNT + b * stride_cb + h * stride_ch + qb)
    stream = tl.load(HEAD_TYPE + h) if HAS_STREAM else 0
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for it in range(0, count):
        kb = tl.load(idx_base + it)
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_N):
            cols = kb * BLOCK_SIZE + sub * BLOCK_N + offs_n
            keep = cols[None, :] < T_K
            kv_ptrs = cols[None, :] * stride_kt + offs_d[:, None]  # v has k's strides (contiguous alike)
            kt = tl.load(k_base + kv_ptrs, mask=keep, other=0.0)
            vt = tl.load(v_base + kv_ptrs, mask=keep, other=0.0)
            if CAUSAL:
                keep = keep & (cols[None, :] <= q_pos[:, None])
            if HAS_STREAM:  # a streaming head keeps sink + local window only (always causal)
                win = (cols[None, :] < SINK) | (q_pos[:, None] - cols[None, :] < LOCAL)
                keep = keep & ((stream == 0) | (win & (cols[None, :] <= q_pos[:, None])))
            p = tl.math.exp2(tl.dot(q, kt) * qk_scale - lse[:, None])
            p = tl.where(keep, p, 0.0)
            ds = p * (tl.dot(do, vt) - delta[:, None])
            dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
    tl.store(DQ + q_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    Q_IDX,
    Q_CNT,
    HEAD_TYPE,
    qk_scale,
    sm_scale,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_ib,
    stride_ih,
    stride_in,
    stride_cb,
    stride_ch,
    T_Q,
    T_K,
    N_HEADS,
    N_KV_HEADS,
    GROUP,
    N_QB,
    SINK,
    LOCAL,
    CAUSAL: tl.constexpr,
    HAS_STREAM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    SUB_N: tl.constexpr = BLOCK_SIZE // BLOCK_N
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    kb = pid // SUB_N
    b = pid_bh // N_KV_HEADS
    hk = pid_bh % N_KV_HEADS
    b64 = b.to(tl.int64)
    cols = kb * BLOCK_SIZE + (pid % SUB_N) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = cols < T_K
    # k, v, dK and dV share one [B, T, Hkv, D] layout
    k_ptrs = b64 * stride_kb + hk * stride_kh + cols[:, None] * stride_kt + offs_d[None, :]
    k = tl.load(K + k_ptrs, mask=col_ok[:, None], other=0.0)
    v = tl.load(V + k_ptrs, mask=col_ok[:, None], other=0.0)
    idx_base = Q_IDX + b64 * stride_ib + hk * stride_ih + kb * stride_in
    count = tl.load(Q_CNT + b * stride_cb + hk * stride_ch + kb)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for it in range(0, count):
        entry = tl.load(idx_base + it)  # g * N_QB + query block
        h = hk * GROUP + entry // N_QB
        qb = entry % N_QB
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_M):
            offs_m = qb * BLOCK_SIZE + sub * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = offs_m < T_Q
            q_ptrs = b64 * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
            q = tl.load(Q + q_ptrs, mask=row_ok[:, None], other=0.0)
            do = tl.load(DO + q_ptrs, mask=row_ok[:, None], other=0.0)
            stat = (b64 * N_HEADS + h) * T_Q + offs_m
            lse = tl.load(LSE + stat, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
            keep = col_ok[:, None] & row_ok[None, :]
            q_pos = offs_m + (T_K - T_Q)
            if CAUSAL:
                keep = keep & (cols[:, None] <= q_pos[None, :])
            if HAS_STREAM:
                stream = tl.load(HEAD_TYPE + h)
                win = (cols[:, None] < SINK) | (q_pos[None, :] - cols[:, None] < LOCAL)
                keep = keep & ((stream == 0) | (win & (cols[:, None] <= q_pos[None, :])))
            pt = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
            pt = tl.where(keep, pt, 0.0)
            dv = tl.dot(pt.to(do.dtype), do, dv)
            dst = pt * (tl.dot(v, tl.trans(do)) - delta[None, :])
            dk = tl.dot(dst.to(q.dtype), q, dk)
    tl.store(DK + k_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + k_ptrs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


def transpose_index(index: BlockIndex, n_kb: int, n_kv_heads: int) -> tuple[Tensor, Tensor]:
    """Per (batch, key/value head, key block): the (group head, query block) pairs keeping it.

    Returns:
        ``(q_idx (B, Hkv, NKB, MAXE) int32, q_cnt (B, Hkv, NKB) int32)``; entry ``g * NQB + qb`` names
        query head ``hk * G + g`` and query block ``qb``, ascending; entries past ``q_cnt`` are 0.
    """
    mask = index_to_mask(index, n_kb)  # (B, Hq, NQB, NKB)
    b, h_q, n_qb, _ = mask.shape
    group = h_q // n_kv_heads
    per_key = mask.view(b, n_kv_heads, group, n_qb, n_kb).permute(0, 1, 4, 2, 3)
    per_key = per_key.reshape(b, n_kv_heads, n_kb, group * n_qb)
    cnt = per_key.sum(-1, dtype=torch.int32)
    max_e = max(int(cnt.max().item()) if cnt.numel() else 0, 1)
    big = torch.iinfo(torch.int32).max
    entries = torch.arange(group * n_qb, device=mask.device, dtype=torch.int32)
    idx = torch.sort(torch.where(per_key, entries, big), dim=-1).values[..., :max_e]
    return torch.where(idx == big, 0, idx).contiguous(), cnt.contiguous()


def default_bwd_config(block_size: int, head_dim: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes of the two kernels (16-bit, block 128: dQ 128 × 64, dK/dV 64 × 128; else smaller).

    ``dkdv_``-prefixed keys (``dkdv_block_m``, ``dkdv_block_n``, ``dkdv_num_warps``,
    ``dkdv_num_stages``) override the shared ones for the ``dK``/``dV`` kernel alone.
    """
    tile = 32 if dtype == torch.float32 else 64
    tile = min(tile, block_size)
    cfg = {"block_m": tile, "block_n": tile, "num_warps": 4, "num_stages": 2}
    if dtype != torch.float32 and block_size >= 128:
        # dQ on 128-query tiles and dK/dV on 128-key tiles, 8 warps each: 16.3 ms for the whole
        # backward against 23.1 with 64 x 64 tiles everywhere (H200, 16k, 32 heads, D 128)
        cfg.update(block_m=128, num_warps=8, dkdv_block_m=64, dkdv_block_n=128, dkdv_num_warps=8)
    return cfg


def block_sparse_attn_bwd(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    index: BlockIndex,
    *,
    block_size: int,
    scale: float,
    causal: bool,
    head_type: Tensor | None = None,
    sink: int = 0,
    local: int = 0,
    config: dict[str, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of block-sparse attention; ``lse`` `(B, Hq, Tq)` is the forward's, in log2 units.

    Streaming heads (``head_type[h] == HEAD_STREAMING``, causal only) walk their sink + local blocks:
    their rows of ``index`` are replaced by those (:func:`streaming_blocks`) and the window is masked
    per element.
    """
    b, t_q, h_q, d = q.shape
    t_k, h_kv = k.shape[1], k.shape[2]
    q, k, v, do = (x.contiguous() for x in (q, k, v, do))
    delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()  # (B, Hq, Tq)
    cfg = {**default_bwd_config(block_size, d, q.dtype), **(config or {})}
    bm, bn = cfg["block_m"], cfg["block_n"]
    kv_bm, kv_bn = cfg.get("dkdv_block_m", bm), cfg.get("dkdv_block_n", bn)
    for name, tile in (("block_m", bm), ("block_n", bn), ("dkdv_block_m", kv_bm), ("dkdv_block_n", kv_bn)):
        if block_size % tile:
            raise ValueError(f"backward tile {name}={tile} must divide block_size={block_size}")
    n_qb, n_kb = triton.cdiv(t_q, block_size), triton.cdiv(t_k, block_size)
    has_stream = head_type is not None and bool((head_type == HEAD_STREAMING).any())
    if has_stream:  # the streaming heads' own blocks, so both kernels' lists cover them
        mask = index_to_mask(index, n_kb)
        heads = (head_type == HEAD_STREAMING).nonzero().flatten().to(mask.device)
        mask[:, heads] = streaming_blocks(t_q, t_k, block_size, sink, local, mask.device)
        index = mask_to_index(mask, t_q, t_k, block_size, causal=True)
    ht = head_type.to(device=q.device, dtype=torch.int32).contiguous() if has_stream else index.cnt
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    launch = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    _bwd_dq_kernel[(n_qb * (block_size // bm), b * h_q)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        index.idx,
        index.cnt,
        ht,
        scale * LOG2E,
        scale,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        index.idx.stride(0),
        index.idx.stride(1),
        index.idx.stride(2),
        index.cnt.stride(0),
        index.cnt.stride(1),
        t_q,
        t_k,
        h_q,
        h_q // h_kv,
        sink,
        local,
        CAUSAL=causal,
        HAS_STREAM=has_stream,
        BLOCK_SIZE=block_size,
        BLOCK_M=bm,
        BLOCK_N=bn,
        HEAD_DIM=d,
        **launch,
    )
    q_idx, q_cnt = transpose_index(index, n_kb, h_kv)
    kv_launch = {
        "num_warps": cfg.get("dkdv_num_warps", cfg["num_warps"]),
        "num_stages": cfg.get("dkdv_num_stages", cfg["num_stages"]),
    }
    _bwd_dkdv_kernel[(n_kb * (block_size // kv_bn), b * h_kv)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        q_idx,
        q_cnt,
        ht,
        scale * LOG2E,
        scale,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        q_idx.stride(0),
        q_idx.stride(1),
        q_idx.stride(2),
        q_cnt.stride(0),
        q_cnt.stride(1),
        t_q,
        t_k,
        h_q,
        h_kv,
        h_q // h_kv,
        n_qb,
        sink,
        local,
        CAUSAL=causal,
        HAS_STREAM=has_stream,
        BLOCK_SIZE=block_size,
        BLOCK_M=kv_bm,
        BLOCK_N=kv_bn,
        HEAD_DIM=d,
        **kv_launch,
    )
    return dq, dk, dv
