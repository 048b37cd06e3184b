# ruff: noqa: N803  (Triton convention: pointer and constexpr arguments are UPPER_CASE)
"""Triton XAttention: fused antidiagonal scoring and fused finalize + threshold selection.

Scoring fuses the strided reshape, GEMM, online softmax and block sums; selection writes the
compacted block index list.

Scoring is one pass: each program owns ``BLOCK_M`` reshaped query rows of one (batch, head) and
walks the reshaped key columns up to its causal limit. The strided reshape is folded into the
loads (``S`` dots of ``D`` wide instead of one ``S·D`` wide GEMM). For every (row, key block) it
stores the base-2 log-sum-exp of the row's scores inside the block, and at the end the row's
total log-sum-exp; the selection kernel turns those into block mass (``Σ_rows 2^(lse_rb - lse_r)``),
finds the ``τ`` cutoff by a binary search (no sort) and compacts the kept blocks in ascending order.
The TMA variant of the scoring kernel (Hopper) reads the reshaped rows as tiles of a
``[B, T/S, S·H·D]`` view of q and k.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.block_sparse_attention.index import BlockIndex

LOG2E = 1.4426950408889634


@triton.jit
def _score_tile_done(
    acc,
    m_i,
    l_i,
    rows,
    start,
    lse_base,
    qk_scale,
    T_K,
    off,
    N_ROWS,
    N_KB,
    STRIDE: tl.constexpr,
    R: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One finished (rows × BLOCK_N columns) score tile: mask, online softmax, per-block log-sum-exp store."""
    cols = start + tl.arange(0, BLOCK_N)
    keep = cols[None, :] * STRIDE < T_K
    if CAUSAL:
        keep = keep & (cols[None, :] * STRIDE <= rows[:, None] * STRIDE + off)
    sc = tl.where(keep, acc * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(sc, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(sc - m_use[:, None])
    l_i = l_i * tl.math.exp2(m_i - m_use) + tl.sum(p, 1)
    NB: tl.constexpr = BLOCK_N // R
    bsum = tl.sum(tl.reshape(p, [BLOCK_M, NB, R]), axis=2)
    lse = tl.math.log2(bsum) + m_use[:, None]
    kb = start // R + tl.arange(0, NB)
    tl.store(lse_base + kb[None, :], lse, mask=(kb[None, :] < N_KB) & (rows[:, None] < N_ROWS))
    return m_new, l_i


@triton.jit
def _score_rows_done(m_i, l_i, rows, row_ok, LSE_R, pid_bh, N_ROWS):
    """Each row's total log-sum-exp (``inf`` for rows past Tq, so they contribute no mass)."""
    row_lse = tl.where(l_i > 0, m_i + tl.math.log2(l_i), float("inf"))
    row_lse = tl.where(row_ok, row_lse, float("inf"))
    tl.store(LSE_R + pid_bh.to(tl.int64) * N_ROWS + rows, row_lse, mask=rows < N_ROWS)


@triton.jit
def _xattn_score_fwd_kernel(
    Q,
    K,
    HEADS,
    LSE_RB,
    LSE_R,
    qk_scale,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    T_Q,
    T_K,
    N_SCORED,
    GROUP,
    N_ROWS,
    N_KB,
    STRIDE: tl.constexpr,
    R: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)  # (batch, scored head): the outputs' row
    b = pid_bh // N_SCORED
    h = tl.load(HEADS + pid_bh % N_SCORED)  # the query head it scores
    hk = h // GROUP
    b64 = b.to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + b64 * stride_qb + h * stride_qh
    k_base = K + b64 * stride_kb + hk * stride_kh
    off = T_K - T_Q
    row_ok = rows * STRIDE < T_Q
    last_row = tl.minimum(pid_m * BLOCK_M + BLOCK_M, N_ROWS) - 1
    n_cols = tl.cdiv(T_K, STRIDE)
    if CAUSAL:
        n_cols = tl.minimum(n_cols, (last_row * STRIDE + off) // STRIDE + 1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    lse_base = LSE_RB + pid_bh.to(tl.int64) * N_ROWS * N_KB + rows[:, None].to(tl.int64) * N_KB
    for start in range(0, n_cols, BLOCK_N):
        cols = start + offs_n
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for s in range(STRIDE):  # a runtime loop: the pipeliner stages one (q, k) pair at a time
            tq = rows * STRIDE + (STRIDE - 1 - s)
            tk = cols * STRIDE + s
            qs = tl.load(
                q_base + tq[:, None] * stride_qt + offs_d[None, :], mask=tq[:, None] < T_Q, other=0.0
            )
            ks = tl.load(
                k_base + tk[None, :] * stride_kt + offs_d[:, None], mask=tk[None, :] < T_K, other=0.0
            )
            acc = tl.dot(qs, ks, acc)
        m_i, l_i = _score_tile_done(
            acc,
            m_i,
            l_i,
            rows,
            start,
            lse_base,
            qk_scale,
            T_K,
            off,
            N_ROWS,
            N_KB,
            STRIDE,
            R,
            CAUSAL,
            BLOCK_M,
            BLOCK_N,
        )
    _score_rows_done(m_i, l_i, rows, row_ok, LSE_R, pid_bh, N_ROWS)


@triton.jit
def _xattn_score_tma_kernel(
    q_desc,
    k_desc,
    HEADS,
    LSE_RB,
    LSE_R,
    qk_scale,
    T_Q,
    T_K,
    N_HEADS,
    N_KV_HEADS,
    GROUP,
    N_ROWS,
    N_KB,
    N_MBLK,
    N_BH,
    N_SCORED,
    STRIDE: tl.constexpr,
    R: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    Q_TO_FP8: tl.constexpr = False,
):
    """The scoring kernel above with TMA loads and one flat loop over (column tile, s).

    ``q_desc``/``k_desc`` view ``[B, T, H, D]`` as ``[B, T/S, S·H·D]``: reshaped row ``i`` is one
    row of that view, and the token ``iS + j`` of head ``h`` is the column slice ``(j·H + h)·D``. So
    the strided reshape costs nothing and every (q, k) tile is one bulk copy. The flat loop lets the
    pipeliner keep loading across column tiles; the epilogue runs on the last ``s`` of each tile.
    Programs are ordered longest rows first (causal work grows with the row block).
    """
    pid = tl.program_id(0)
    pid_m = N_MBLK - 1 - pid // N_BH
    pid_bh = pid % N_BH  # (batch, scored head): the outputs' row
    b = pid_bh // N_SCORED
    h = tl.load(HEADS + pid_bh % N_SCORED)  # the query head it scores
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    off = T_K - T_Q
    row_ok = rows * STRIDE < T_Q
    last_row = tl.minimum(pid_m * BLOCK_M + BLOCK_M, N_ROWS) - 1
    n_cols = tl.cdiv(T_K, STRIDE)
    if CAUSAL:
        n_cols = tl.minimum(n_cols, (last_row * STRIDE + off) // STRIDE + 1)
    n_iter = tl.cdiv(n_cols, BLOCK_N) * STRIDE
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    lse_base = LSE_RB + pid_bh.to(tl.int64) * N_ROWS * N_KB + rows[:, None].to(tl.int64) * N_KB
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for it in tl.range(0, n_iter, warp_specialize=WARP_SPECIALIZE):
        s = it % STRIDE
        start = (it // STRIDE) * BLOCK_N
        qs = q_desc.load([b, pid_m * BLOCK_M, ((STRIDE - 1 - s) * N_HEADS + h) * HEAD_DIM])
        ks = k_desc.load([b, start, (s * N_KV_HEADS + hk) * HEAD_DIM])
        qs = tl.reshape(qs, [BLOCK_M, HEAD_DIM])
        ks = tl.reshape(ks, [BLOCK_N, HEAD_DIM])
        if Q_TO_FP8:  # 16-bit q tile cast to e4m3 in registers (saturating, as to_fp8_e4m3)
            qs = tl.minimum(tl.maximum(qs.to(tl.float32), -448.0), 448.0).to(tl.float8e4nv)
        acc = tl.dot(qs, ks.T, acc)
        if s == STRIDE - 1:
            m_i, l_i = _score_tile_done(
                acc,
                m_i,
                l_i,
                rows,
                start,
                lse_base,
                qk_scale,
                T_K,
                off,
                N_ROWS,
                N_KB,
                STRIDE,
                R,
                CAUSAL,
                BLOCK_M,
                BLOCK_N,
            )
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    _score_rows_done(m_i, l_i, rows, row_ok, LSE_R, pid_bh, N_ROWS)


@triton.jit
def _fp8_cast_kernel(X, Y, N, BLOCK: tl.constexpr):
    """``y = clamp(x, ±448).to(e4m3)`` in one pass (torch needs two, and its cast maps overflow to NaN)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < N, other=0.0).to(tl.float32)
    x = tl.minimum(tl.maximum(x, -448.0), 448.0)
    tl.store(Y + offs, x.to(tl.float8e4nv), mask=offs < N)


def to_fp8_e4m3(x: Tensor) -> Tensor:
    """Saturating cast to float8 e4m3 (one fused pass for contiguous tensors)."""
    if not x.is_contiguous():
        return x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    y = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    n = x.numel()
    _fp8_cast_kernel[(triton.cdiv(n, 8192),)](x, y, n, BLOCK=8192, num_warps=8)
    return y


@triton.jit
def _xattn_select_kernel(
    LSE_RB,
    LSE_R,
    MASS,
    IDX,
    CNT,
    NFULL,
    tau,
    row_share,
    dense_above,
    T_Q,
    T_K,
    N_ROWS,
    N_KB,
    N_QB,
    STRIDE: tl.constexpr,
    R: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    CAUSAL: tl.constexpr,
    NKB_P2: tl.constexpr,
    WRITE_MASS: tl.constexpr,
):
    qb = tl.program_id(0)
    pid_bh = tl.program_id(1)
    kb = tl.arange(0, NKB_P2)
    off = T_K - T_Q
    last_row = tl.minimum(qb * R + R, N_ROWS) - 1
    vis = kb < N_KB
    if CAUSAL:
        vis = vis & (kb * R * STRIDE <= last_row * STRIDE + off)
    mass = tl.zeros([NKB_P2], tl.float32)
    row_max = tl.zeros([NKB_P2], tl.float32)
    base = LSE_RB + pid_bh.to(tl.int64) * N_ROWS * N_KB
    for r in range(0, R):
        row = qb * R + r
        lse_r = tl.load(LSE_R + pid_bh.to(tl.int64) * N_ROWS + row)
        x = tl.load(base + row.to(tl.int64) * N_KB + kb, mask=vis, other=float("-inf"))
        p = tl.math.exp2(x - lse_r)
        mass += p
        row_max = tl.maximum(row_max, p)
    row_id = pid_bh.to(tl.int64) * N_QB + qb
    if WRITE_MASS:
        tl.store(MASS + row_id * N_KB + kb, mass, mask=kb < N_KB)
    q_lo = qb * BLOCK_SIZE + off
    q_hi = tl.minimum(qb * BLOCK_SIZE + BLOCK_SIZE, T_Q) - 1 + off
    tok_vis = kb < N_KB
    if CAUSAL:
        tok_vis = tok_vis & (kb * BLOCK_SIZE <= q_hi)
    forced = tok_vis & ((kb == 0) | ((kb * BLOCK_SIZE <= q_hi) & (kb * BLOCK_SIZE + BLOCK_SIZE > q_lo)))
    m = tl.where(vis, mass, 0.0)
    need = tau * tl.sum(m, 0) - tl.sum(tl.where(forced, m, 0.0), 0)
    cand = tl.where(vis & ~forced, m, -1.0)
    # The cutoff is the smallest candidate mass c with sum(cand > c) < need: adding blocks in
    # descending mass until the kept share reaches tau stops exactly at it (ties kept). A binary
    # search over the bit patterns of non-negative floats (ordered like the floats) finds it in 31
    # masked sums, instead of sorting the row.
    lo = tl.zeros([], tl.int32)
    hi = tl.maximum(tl.max(cand, 0), 0.0).to(tl.int32, bitcast=True)
    for _ in range(31):
        mid = lo + (hi - lo) // 2
        v = mid.to(tl.float32, bitcast=True)
        above = tl.sum(tl.where(cand > v, cand, 0.0), 0)
        ok = above < need
        hi = tl.where(ok, mid, hi)
        lo = tl.where(ok, lo, mid + 1)
    cutoff = tl.where(need > 0, hi.to(tl.float32, bitcast=True), float("inf"))
    keep = forced | ((cand >= cutoff) & (cand > 0) & tok_vis)
    # row_share > 0: also any block where one reshaped row puts at least that share of its mass.
    keep = keep | ((row_share > 0) & (row_max >= row_share) & (row_max > 0) & vis & tok_vis)
    # dense_above < 1: a row keeping more than that share of its visible blocks keeps them all
    # (keep is a subset of tok_vis, so at 1.0 the test never passes).
    n_keep = tl.sum(keep.to(tl.int32), 0).to(tl.float32)
    n_vis = tl.sum(tok_vis.to(tl.int32), 0).to(tl.float32)
    keep = tl.where(n_keep > dense_above * n_vis, tok_vis, keep)
    keep_i = keep.to(tl.int32)
    pos = tl.cumsum(keep_i, 0) - 1
    tl.store(IDX + row_id * N_KB + pos, kb, mask=keep)
    tl.store(CNT + row_id, tl.sum(keep_i, 0))
    limit = tl.minimum(q_lo + 1, T_K) // BLOCK_SIZE if CAUSAL else T_K // BLOCK_SIZE
    tl.store(NFULL + row_id, tl.sum((keep & (kb < limit)).to(tl.int32), 0))


def tma_supported(q: Tensor, k: Tensor, stride: int, *, check_device: bool = True) -> bool:
    """Whether the TMA scoring kernel applies: Hopper or newer, 16/8-bit contiguous q/k, T a multiple of S."""
    if check_device and (q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] < 9):
        return False
    return (
        q.element_size() <= 2
        and q.is_contiguous()
        and k.is_contiguous()
        and q.shape[1] % stride == 0
        and k.shape[1] % stride == 0
        and q.data_ptr() % 16 == 0
        and k.data_ptr() % 16 == 0
    )


def score_config(stride: int, block_size: int, *, tma: bool = False, itemsize: int = 2) -> dict[str, int]:
    """Scoring launch config from the H200 sweeps at 128k (``bench/notes/kernels.md``).

    Pointer loads: block_n 128, 3 stages (block_n 128 beat 64 by 1.4-1.7x). TMA loads: block_n 256,
    4 stages in fp8 (5.2 ms at S=16 vs 6.3 for the best pointer config) and 2 in 16-bit (the
    shared-memory limit; 11.7 ms vs 13.2).
    """
    r = block_size // stride
    if tma:
        return {
            "block_m": 128,
            "block_n": max(256, r),
            "num_warps": 8,
            "num_stages": 4 if itemsize == 1 else 2,
        }
    return {"block_m": 128, "block_n": max(128, r), "num_warps": 8, "num_stages": 3}


def xattn_score_fwd(
    q: Tensor,
    k: Tensor,
    *,
    stride: int,
    block_size: int,
    scale: float,
    causal: bool,
    config: dict[str, int] | None = None,
    heads: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the scoring kernel (``config={"fp8": 1}`` scores in float8 e4m3).

    ``heads``: `(n,)` int32 query heads to score (default all); the outputs hold those heads only,
    in that order.

    ``config={"tma": 0|1}`` picks the pointer-load or the TMA kernel; by default TMA where
    :func:`tma_supported` says it applies (Hopper or newer). ``config={"fp8": 1, "q_to_fp8": 1}``
    (TMA only) casts only k ahead of the kernel and each 16-bit q tile inside it.

    Returns:
        ``(lse_rb (B*n, rows, NKB), lse_r (B*n, rows))`` in log2 units (``n`` = scored heads).
    """
    b, t_q, h_q, d = q.shape
    if heads is None:
        heads = torch.arange(h_q, dtype=torch.int32, device=q.device)
    n_scored = heads.numel()
    t_k, h_kv = k.shape[1], k.shape[2]
    r = block_size // stride
    n_qb, n_kb = triton.cdiv(t_q, block_size), triton.cdiv(t_k, block_size)
    n_rows = n_qb * r
    config = config or {}
    q_to_fp8 = bool(config.get("fp8") and config.get("q_to_fp8"))
    if config.get("fp8"):  # score in fp8 (e4m3): twice the tensor-core rate on Hopper, ample for ranking
        q, k = (q if q_to_fp8 else to_fp8_e4m3(q)), to_fp8_e4m3(k)
    use_tma = bool(config.get("tma", tma_supported(q, k, stride)))
    if q_to_fp8 and not use_tma:
        raise ValueError("q_to_fp8 needs the TMA scoring kernel (Hopper or newer, contiguous q/k)")
    cfg = {**score_config(stride, block_size, tma=use_tma, itemsize=k.element_size()), **config}
    block_n = max(cfg["block_n"], r)
    lse_rb = torch.empty(b * n_scored, n_rows, n_kb, dtype=torch.float32, device=q.device)
    lse_r = torch.empty(b * n_scored, n_rows, dtype=torch.float32, device=q.device)
    if use_tma:
        if not tma_supported(q, k, stride, check_device=False):
            raise ValueError(
                "tma scoring needs contiguous 16- or 8-bit [B, T, H, D] q/k with T a multiple of the stride; "
                f"got q{tuple(q.shape)} k{tuple(k.shape)}, stride {stride}"
            )
        q3 = q.view(b, t_q // stride, stride * h_q * d)
        k3 = k.view(b, t_k // stride, stride * h_kv * d)
        q_desc = TensorDescriptor.from_tensor(q3, [1, cfg["block_m"], d])
        k_desc = TensorDescriptor.from_tensor(k3, [1, block_n, d])
        n_mblk = triton.cdiv(n_rows, cfg["block_m"])
        _xattn_score_tma_kernel[(n_mblk * b * n_scored,)](
            q_desc,
            k_desc,
            heads,
            lse_rb,
            lse_r,
            scale / stride * LOG2E,
            t_q,
            t_k,
            h_q,
            h_kv,
            h_q // h_kv,
            n_rows,
            n_kb,
            n_mblk,
            b * n_scored,
            n_scored,
            STRIDE=stride,
            R=r,
            CAUSAL=causal,
            BLOCK_M=cfg["block_m"],
            BLOCK_N=block_n,
            HEAD_DIM=d,
            WARP_SPECIALIZE=bool(cfg.get("ws", 0)),
            Q_TO_FP8=q_to_fp8,
            num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )
        return lse_rb, lse_r
    grid = (triton.cdiv(n_rows, cfg["block_m"]), b * n_scored)
    _xattn_score_fwd_kernel[grid](
        q,
        k,
        heads,
        lse_rb,
        lse_r,
        scale / stride * LOG2E,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        t_q,
        t_k,
        n_scored,
        h_q // h_kv,
        n_rows,
        n_kb,
        STRIDE=stride,
        R=r,
        CAUSAL=causal,
        BLOCK_M=cfg["block_m"],
        BLOCK_N=block_n,
        HEAD_DIM=d,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return lse_rb, lse_r


def xattn_select_fwd(
    lse_rb: Tensor,
    lse_r: Tensor,
    *,
    batch: int,
    heads: int,
    t_q: int,
    t_k: int,
    stride: int,
    block_size: int,
    tau: float,
    causal: bool,
    return_mass: bool = False,
    row_share: float = 0.0,
    dense_above: float = 1.0,
) -> tuple[BlockIndex, Tensor | None]:
    """Finalize block mass and select blocks. Returns ``(BlockIndex, mass (B, H, NQB, NKB) or None)``.

    ``row_share`` and ``dense_above`` are the extra rules of ``reference.select_blocks_ref``.
    """
    r = block_size // stride
    n_qb, n_kb = triton.cdiv(t_q, block_size), triton.cdiv(t_k, block_size)
    dev = lse_rb.device
    idx = torch.empty(batch, heads, n_qb, n_kb, dtype=torch.int32, device=dev)
    cnt = torch.empty(batch, heads, n_qb, dtype=torch.int32, device=dev)
    n_full = torch.empty_like(cnt)
    mass = torch.empty(batch, heads, n_qb, n_kb, dtype=torch.float32, device=dev) if return_mass else cnt
    nkb_p2 = triton.next_power_of_2(n_kb)
    _xattn_select_kernel[(n_qb, batch * heads)](
        lse_rb,
        lse_r,
        mass,
        idx,
        cnt,
        n_full,
        float(tau),
        float(row_share),
        float(dense_above),
        t_q,
        t_k,
        n_qb * r,
        n_kb,
        n_qb,
        STRIDE=stride,
        R=r,
        BLOCK_SIZE=block_size,
        CAUSAL=causal,
        NKB_P2=nkb_p2,
        WRITE_MASS=return_mass,
        num_warps=4 if nkb_p2 <= 1024 else 8,
    )
    return BlockIndex(idx, cnt, n_full), (mass if return_mass else None)
