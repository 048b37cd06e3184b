"""Public block-sparse attention op: validation, block-mask <-> index conversion, dispatch, autograd."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from kernels.block_sparse_attention.index import BlockIndex, index_to_mask, mask_to_index
from kernels.block_sparse_attention.reference import HEAD_MASKED, HEAD_STREAMING, block_sparse_attn_ref
from kernels.dispatch import resolve_impl

SUPPORTED_BLOCK_SIZES = (64, 128)
SUPPORTED_HEAD_DIMS = (64, 128)


try:
    from kernels.block_sparse_attention.triton_bwd import block_sparse_attn_bwd
    from kernels.block_sparse_attention.triton_fwd import block_sparse_attn_fwd
except ImportError:  # triton missing: reference only
    block_sparse_attn_fwd = block_sparse_attn_bwd = None


def _check(q: Tensor, k: Tensor, v: Tensor, block_size: int, head_type: Tensor | None, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"block_sparse_attn expects [B, T, H, D]; got q{tuple(q.shape)} k{tuple(k.shape)} "
            f"v{tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shape mismatch: q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q/k/v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if head_type is not None:
        if head_type.shape != (q.shape[2],):
            raise ValueError(f"head_type must have shape ({q.shape[2]},), got {tuple(head_type.shape)}")
        if not bool(((head_type == HEAD_MASKED) | (head_type == HEAD_STREAMING)).all()):
            raise ValueError("head_type entries must be 0 (block mask) or 1 (streaming)")
        if not causal and bool((head_type == HEAD_STREAMING).any()):
            raise ValueError("streaming heads need causal=True")


def _triton_unsupported(q: Tensor, block_size: int) -> str | None:
    if block_sparse_attn_fwd is None:
        return "triton is not importable"
    if block_size not in SUPPORTED_BLOCK_SIZES:
        return f"block_size {block_size} not in {SUPPORTED_BLOCK_SIZES}"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head dim {q.shape[-1]} not in {SUPPORTED_HEAD_DIMS}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype} not supported"
    if any(x.stride(-1) != 1 for x in (q,)):
        return "q/k/v need a contiguous last dimension"
    return None


class BlockSparseAttnFunction(torch.autograd.Function):
    """Triton forward and backward (``triton_fwd.py``, ``triton_bwd.py``)."""

    @staticmethod
    def forward(ctx, q, k, v, index, block_size, scale, causal, head_type, sink, local, config):  # noqa: D102
        # the backward needs the forward's log-sum-exp; only worth storing when a gradient will follow
        wants_grad = any(ctx.needs_input_grad[:3])
        out = block_sparse_attn_fwd(
            q,
            k,
            v,
            index,
            block_size=block_size,
            scale=scale,
            causal=causal,
            head_type=head_type,
            sink=sink,
            local=local,
            config=config,
            return_lse=wants_grad,
        )
        if wants_grad:
            out, lse = out
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.index = index
            ctx.args = (block_size, scale, causal, head_type, sink, local)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        block_size, scale, causal, head_type, sink, local = ctx.args
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = block_sparse_attn_bwd(
            grad_out,
            q,
            k,
            v,
            out,
            lse,
            ctx.index,
            block_size=block_size,
            scale=scale,
            causal=causal,
            head_type=head_type,
            sink=sink,
            local=local,
        )
        return dq, dk, dv, None, None, None, None, None, None, None, None


def block_sparse_attn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: Tensor | None = None,
    *,
    block_index: BlockIndex | None = None,
    block_size: int = 128,
    scale: float | None = None,
    causal: bool = False,
    head_type: Tensor | None = None,
    sink: int = 0,
    local: int = 0,
    impl: Literal["auto", "triton", "reference"] = "auto",
    config: dict[str, int] | None = None,
) -> Tensor:
    """Block-sparse attention in ``[B, T, H, D]`` (see ``README.md`` for the maths and limits).

    Args:
        q: `(B, Tq, Hq, D)` queries.
        k: `(B, Tk, Hkv, D)` keys, ``Hq % Hkv == 0``.
        v: `(B, Tk, Hkv, D)` values.
        block_mask: `(B, Hq, ceil(Tq/block_size), ceil(Tk/block_size))` bool; give this or ``block_index``.
        block_index: the same selection already compacted (e.g. from XAttention's selection kernel).
        block_size: square block size in tokens (Triton: 64 or 128).
        scale: softmax scale, default ``D ** -0.5``.
        causal: causal rule with queries aligned to the end of the keys.
        head_type: optional `(Hq,)` int: 0 = use the block mask, 1 = streaming head (sink + local).
        sink: sink tokens of streaming heads.
        local: local window of streaming heads (tokens).
        impl: ``"auto"``, ``"triton"`` (errors if it cannot run) or ``"reference"``.
        config: optional launch override ``{"block_n", "num_warps", "num_stages"}`` (benchmarks).

    Returns:
        `(B, Tq, Hq, D)` in ``q``'s dtype.
    """
    _check(q, k, v, block_size, head_type, causal)
    b, t_q, h_q, d = q.shape
    t_k = k.shape[1]
    n_qb, n_kb = -(-t_q // block_size), -(-t_k // block_size)
    if block_mask is None and block_index is None:
        raise ValueError("give block_mask or block_index")
    if block_mask is not None and block_mask.shape != (b, h_q, n_qb, n_kb):
        raise ValueError(
            f"block_mask must be (B, Hq, NQB, NKB) = {(b, h_q, n_qb, n_kb)}, got {tuple(block_mask.shape)}"
        )
    if block_mask is not None and block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be bool, got {block_mask.dtype}")
    scale = d**-0.5 if scale is None else float(scale)
    which = resolve_impl(
        impl, q, k, v, op="block_sparse_attn", unsupported=_triton_unsupported(q, block_size)
    )
    if which == "reference":
        if block_mask is None:
            block_mask = index_to_mask(block_index, n_kb)
        return block_sparse_attn_ref(
            q,
            k,
            v,
            block_mask,
            block_size=block_size,
            scale=scale,
            causal=causal,
            head_type=head_type,
            sink=sink,
            local=local,
        )
    if block_index is None:
        block_index = mask_to_index(block_mask, t_q, t_k, block_size, causal=causal)
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    return BlockSparseAttnFunction.apply(
        q, k, v, block_index, block_size, scale, causal, head_type, sink, local, config
    )
