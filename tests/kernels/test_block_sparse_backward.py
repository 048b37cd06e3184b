"""Triton backward of block-sparse attention vs autograd through the fp64 reference (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from kernels.block_sparse_attention import (
    HEAD_STREAMING,
    block_sparse_attn,
    block_sparse_attn_ref,
    mask_to_index,
)
from kernels.block_sparse_attention.index import streaming_blocks
from kernels.block_sparse_attention.reference import token_mask
from kernels.block_sparse_attention.triton_bwd import block_sparse_attn_bwd, transpose_index
from kernels.block_sparse_attention.triton_fwd import block_sparse_attn_fwd
from kernels.testing import assert_close, structured_qkv

CASES = [
    # (B, Tq, Tk, Hq, Hkv, D, block, causal): GQA, batch > 1, ragged tails, Tq < Tk, non-causal
    (2, 200, 200, 4, 2, 64, 64, True),
    (1, 130, 300, 2, 1, 64, 64, True),
    (1, 250, 250, 2, 2, 128, 128, False),
    (1, 260, 260, 4, 1, 64, 128, True),
]


def _case_id(c):
    b, tq, tk, hq, hkv, d, bs, causal = c
    return f"B{b}-Tq{tq}-Tk{tk}-H{hq}x{hkv}-D{d}-bs{bs}-{'causal' if causal else 'full'}"


def _inputs(case, dtype, device, seed):
    b, t_q, t_k, h_q, h_kv, d, bs, causal = case
    # sinks, local windows and planted needles (not only noise), sharp enough to make P peaked
    q, k, v, _ = structured_qkv(b, t_k, h_q, h_kv, d, dtype=dtype, device=device, seed=seed, needle_len=16)
    q = q[:, t_k - t_q :].contiguous()
    gen = torch.Generator().manual_seed(seed)
    n_qb, n_kb = -(-t_q // bs), -(-t_k // bs)
    mask = torch.rand(b, h_q, n_qb, n_kb, generator=gen) < 0.6
    mask[..., 0] = True  # the sink block
    diag = (torch.arange(n_qb) * bs + t_k - t_q) // bs
    mask[..., torch.arange(n_qb), diag.clamp(max=n_kb - 1)] = True  # the causal diagonal
    mask[0, 0, -1, :] = False  # one row that keeps nothing: zero gradient, no NaN
    return q, k, v, mask.to(device), causal, bs


def _ref_grads(q, k, v, mask, bs, causal, do):
    leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    out = block_sparse_attn_ref(*leaves, mask, block_size=bs, causal=causal)
    return torch.autograd.grad(out, leaves, do.double())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_triton_backward_matches_reference(case, dtype, device):
    q, k, v, mask, causal, bs = _inputs(case, dtype, device, seed=7)
    scale = q.shape[-1] ** -0.5
    index = mask_to_index(mask, q.shape[1], k.shape[1], bs, causal=causal)
    out, lse = block_sparse_attn_fwd(
        q, k, v, index, block_size=bs, scale=scale, causal=causal, return_lse=True
    )
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    got = block_sparse_attn_bwd(do, q, k, v, out, lse, index, block_size=bs, scale=scale, causal=causal)
    want = _ref_grads(q, k, v, mask, bs, causal, do)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert g.dtype == dtype
        assert_close(name, w, g, dtype)
    last = (-(-q.shape[1] // bs) - 1) * bs  # the row that keeps nothing: its queries get no gradient
    assert bool((got[0][0, last:, 0] == 0).all())


@pytest.mark.parametrize(
    "config",
    [
        {"block_m": 16, "block_n": 32, "dkdv_block_m": 32, "dkdv_block_n": 64},
        {"block_m": 32, "block_n": 16, "dkdv_block_m": 16, "dkdv_block_n": 32, "dkdv_num_warps": 2},
    ],
    ids=["dkdv-wide-keys", "dkdv-own-warps"],
)
def test_backward_with_separate_dkdv_tiles_matches_reference(config, device):
    q, k, v, mask, causal, bs = _inputs(CASES[3], torch.float16, device, seed=5)
    scale = q.shape[-1] ** -0.5
    index = mask_to_index(mask, q.shape[1], k.shape[1], bs, causal=causal)
    out, lse = block_sparse_attn_fwd(
        q, k, v, index, block_size=bs, scale=scale, causal=causal, return_lse=True
    )
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device, q.dtype)
    got = block_sparse_attn_bwd(
        do, q, k, v, out, lse, index, block_size=bs, scale=scale, causal=causal, config=config
    )
    want = _ref_grads(q, k, v, mask, bs, causal, do)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(name, w, g, q.dtype)


def test_backward_rejects_a_tile_that_does_not_divide_the_block(device):
    q, k, v, mask, causal, bs = _inputs(CASES[0], torch.float16, device, seed=5)
    index = mask_to_index(mask, q.shape[1], k.shape[1], bs, causal=causal)
    out, lse = block_sparse_attn_fwd(q, k, v, index, block_size=bs, scale=0.1, causal=causal, return_lse=True)
    with pytest.raises(ValueError, match="dkdv_block_n=48 must divide block_size=64"):
        block_sparse_attn_bwd(
            out,
            q,
            k,
            v,
            out,
            lse,
            index,
            block_size=bs,
            scale=0.1,
            causal=causal,
            config={"dkdv_block_n": 48},
        )


def test_forward_lse_is_the_row_logsumexp(device):
    q, k, v, mask, causal, bs = _inputs(CASES[0], torch.float32, device, seed=3)
    scale = q.shape[-1] ** -0.5
    index = mask_to_index(mask, q.shape[1], k.shape[1], bs, causal=causal)
    _, lse = block_sparse_attn_fwd(q, k, v, index, block_size=bs, scale=scale, causal=causal, return_lse=True)
    rep = q.shape[2] // k.shape[2]
    logits = torch.einsum("bthd,bshd->bhts", q.double(), k.double().repeat_interleave(rep, 2)) * scale
    keep = mask.repeat_interleave(bs, 2).repeat_interleave(bs, 3)[..., : q.shape[1], : k.shape[1]]
    keep = keep & torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=device).tril()
    want = torch.logsumexp(logits.masked_fill(~keep, float("-inf")), -1) / torch.log(torch.tensor(2.0))
    last = (-(-q.shape[1] // bs) - 1) * bs
    assert bool(torch.isinf(lse[0, 0, last:]).all())  # the row that keeps nothing
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(lse))
    assert torch.allclose(lse[finite].double(), want[finite], atol=1e-4, rtol=1e-5)


def test_transpose_index_lists_the_rows_of_each_key_block():
    mask = torch.zeros(1, 4, 3, 3, dtype=torch.bool)  # 4 query heads on 2 kv heads
    mask[0, 0, 2, 0] = mask[0, 1, 0, 0] = mask[0, 1, 2, 2] = mask[0, 3, 1, 1] = True
    index = mask_to_index(mask, 192, 192, 64, causal=True)
    q_idx, q_cnt = transpose_index(index, 3, 2)
    # kv head 0 = query heads 0, 1 (entry g * NQB + qb): key block 0 <- (0, qb 2), (1, qb 0)
    assert q_cnt.tolist() == [[[2, 0, 1], [0, 1, 0]]]
    assert q_idx[0, 0, 0, :2].tolist() == [0 * 3 + 2, 1 * 3 + 0]
    assert q_idx[0, 0, 2, 0].item() == 1 * 3 + 2
    assert q_idx[0, 1, 1, 0].item() == 1 * 3 + 1  # query head 3 is g = 1 of kv head 1


def test_op_autograd_matches_reference(device):
    q, k, v, mask, causal, bs = _inputs(CASES[1], torch.float32, device, seed=5)
    q, k, v = (x.requires_grad_(True) for x in (q, k, v))
    out = block_sparse_attn(q, k, v, mask, block_size=bs, causal=causal, impl="triton")
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = _ref_grads(q, k, v, mask, bs, causal, do)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(name, w, g, torch.float32)


STREAM_CASES = [
    # (B, Tq, Tk, Hq, Hkv, D, block, sink, local, streaming heads)
    (2, 200, 200, 4, 2, 64, 64, 16, 70, (1, 2)),
    (1, 130, 300, 2, 1, 64, 64, 64, 100, (0,)),
    (1, 260, 260, 2, 2, 64, 128, 4, 128, (1,)),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize(
    "case", STREAM_CASES, ids=lambda c: f"Tq{c[1]}-Tk{c[2]}-bs{c[6]}-sink{c[7]}-local{c[8]}"
)
def test_streaming_heads_backward_matches_reference(case, dtype, device):
    b, t_q, t_k, h_q, h_kv, d, bs, sink, local, streaming = case
    q, k, v, mask, _, _ = _inputs((b, t_q, t_k, h_q, h_kv, d, bs, True), dtype, device, seed=11)
    head_type = torch.zeros(h_q, dtype=torch.int32, device=device)
    head_type[list(streaming)] = HEAD_STREAMING
    kw = dict(block_size=bs, causal=True, head_type=head_type, sink=sink, local=local)
    leaves = [x.requires_grad_(True) for x in (q, k, v)]
    out = block_sparse_attn(*leaves, mask, impl="triton", **kw)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    got = torch.autograd.grad(out, leaves, do)
    ref_leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    ref = block_sparse_attn_ref(*ref_leaves, mask, **kw)
    want = torch.autograd.grad(ref, ref_leaves, do.double())
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(name, w, g, dtype)


@pytest.mark.parametrize(("t_q", "t_k"), [(200, 200), (130, 300), (256, 256)])
def test_streaming_blocks_are_the_blocks_the_window_touches(t_q, t_k):
    bs = 64
    n_qb, n_kb = -(-t_q // bs), -(-t_k // bs)
    for sink in (0, 5, 64, 65):
        for local in range(1, 200, 3):  # every residue of the window edge modulo the block
            tokens = token_mask(
                torch.ones(1, 1, n_qb, n_kb, dtype=torch.bool),
                t_q,
                t_k,
                bs,
                causal=True,
                head_type=torch.tensor([HEAD_STREAMING]),
                sink=sink,
                local=local,
            )[0, 0]
            pad = torch.zeros(n_qb * bs, n_kb * bs, dtype=torch.bool)
            pad[:t_q, :t_k] = tokens
            touched = pad.view(n_qb, bs, n_kb, bs).any(3).any(1)
            got = streaming_blocks(t_q, t_k, bs, sink, local, "cpu")
            assert torch.equal(got, touched), (sink, local)
