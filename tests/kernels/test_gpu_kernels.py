"""The kernel checks again in bf16 at real sizes on a CUDA device (``pytest -m gpu tests/kernels``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.block_sparse_attention import (
    HEAD_STREAMING,
    block_sparse_attn,
    block_sparse_attn_ref,
    index_to_mask,
)
from kernels.testing import PEAKED, assert_close, needles_kept, rel_rms, structured_qkv
from kernels.xattention import antidiagonal_block_mass_ref, xattn_select, xattn_select_ref
from tests.utils import require_cuda

pytestmark = [pytest.mark.gpu, require_cuda]


@pytest.mark.parametrize(
    ("t", "bs", "d", "h_kv"),
    [(4096, 128, 128, 8), (4000, 64, 64, 2), (3001, 128, 64, 8)],
    ids=["T4096-bs128-D128-H8x8", "T4000-bs64-D64-H8x2", "T3001-bs128-D64-H8x8"],
)
def test_bf16_block_sparse_matches_reference(t, bs, d, h_kv, device):
    torch.manual_seed(0)
    q, k, v, _ = structured_qkv(2, t, 8, h_kv, d, dtype=torch.bfloat16, device=device, seed=1)
    n = -(-t // bs)
    mask = torch.rand(2, 8, n, n, device=device) < 0.3
    mask[..., 0] = True
    head_type = torch.zeros(8, dtype=torch.int32, device=device)
    head_type[[2, 5]] = HEAD_STREAMING
    kw = dict(block_size=bs, causal=True, head_type=head_type, sink=128, local=1024)
    out = block_sparse_attn(q, k, v, mask, impl="triton", **kw)
    ref = block_sparse_attn_ref(q, k, v, mask, **kw)
    assert_close("bf16-block-sparse", ref.float(), out.float(), torch.bfloat16)


@pytest.mark.parametrize("t", [16384, 20000])
def test_bf16_full_mask_matches_sdpa(t, device):
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, t, 32, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
    n = -(-t // 128)
    ones = torch.ones(1, 32, n, n, dtype=torch.bool, device=device)
    out = block_sparse_attn(q, k, v, ones, block_size=128, causal=True, impl="triton")
    want = F.scaled_dot_product_attention(*(x.transpose(1, 2).float() for x in (q, k, v)), is_causal=True)
    assert_close("bf16-full-vs-sdpa", want.transpose(1, 2), out.float(), torch.bfloat16)


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_bf16_xattention_matches_reference(stride, device):
    torch.manual_seed(2)
    q, k, _, _ = structured_qkv(1, 8192, 8, 4, 128, dtype=torch.bfloat16, device=device, seed=2)
    index, mass = xattn_select(q, k, stride=stride, tau=0.9, block_size=128, impl="triton", return_mass=True)
    ref_mask, ref_mass = xattn_select_ref(q, k, stride=stride, tau=0.9, block_size=128)
    assert_close("bf16-mass", ref_mass, mass, torch.float32)
    assert (index_to_mask(index, 64) != ref_mask).float().mean().item() <= 0.02


def test_bf16_stride1_oracle_mass(device):
    torch.manual_seed(3)
    q, k, _, _ = structured_qkv(1, 4096, 4, 4, 128, dtype=torch.bfloat16, device=device, seed=3)
    _, mass = xattn_select(q, k, stride=1, tau=0.9, block_size=128, impl="triton", return_mass=True)
    ref = antidiagonal_block_mass_ref(q, k, stride=1, block_size=128)
    assert_close("oracle-mass", ref, mass, torch.float32)


def test_bf16_needles_kept_at_32k(device):
    torch.manual_seed(4)
    q, k, _, needles = structured_qkv(  # the benchmark's "peaked" logits: sparse enough for the density bound
        1,
        32768,
        8,
        8,
        128,
        dtype=torch.bfloat16,
        device=device,
        seed=4,
        needle_len=64,
        needles_per_head=4,
        **PEAKED,
    )
    for stride in (8, 16):
        index, _ = xattn_select(q, k, stride=stride, tau=0.9, block_size=128, impl="triton")
        mask = index_to_mask(index, 256)
        assert needles_kept(needles, mask, 128) == 1.0
        assert mask.float().mean().item() < 0.25


def test_fp8_scoring_tracks_bf16_reference(device):
    torch.manual_seed(5)
    q, k, _, needles = structured_qkv(1, 8192, 8, 8, 128, dtype=torch.bfloat16, device=device, seed=5)
    index, mass = xattn_select(q, k, stride=16, tau=0.9, impl="triton", return_mass=True, config={"fp8": 1})
    ref_mask, ref_mass = xattn_select_ref(q, k, stride=16, tau=0.9)
    assert rel_rms(ref_mass, mass) < 3e-2
    mask = index_to_mask(index, 64)
    assert (mask != ref_mask).float().mean().item() <= 0.05
    assert needles_kept(needles, mask, 128) == 1.0


def test_fp8_cast_saturates_like_torch(device):
    from kernels.xattention.triton_fwd import to_fp8_e4m3

    x = torch.randn(3, 4097, 5, device=device, dtype=torch.bfloat16) * 300
    want = x.clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(to_fp8_e4m3(x).float(), want.float())
    assert not to_fp8_e4m3(x).float().isnan().any()


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_tma_scoring_equals_pointer_scoring_at_16k(fp8, device):
    from kernels.xattention.triton_fwd import to_fp8_e4m3, xattn_score_fwd

    q, k, _, _ = structured_qkv(2, 16384, 8, 4, 128, dtype=torch.bfloat16, device=device, seed=6)
    if fp8:
        q, k = to_fp8_e4m3(q), to_fp8_e4m3(k)
    kw = dict(stride=16, block_size=128, scale=128**-0.5, causal=True)
    cfg = {
        "block_m": 128,
        "block_n": 256,
        "num_warps": 8,
        "num_stages": 2,
    }  # same tiles: same entries written
    rb_ptr, r_ptr = xattn_score_fwd(q, k, **kw, config={**cfg, "tma": 0})
    rb_tma, r_tma = xattn_score_fwd(q, k, **kw, config={**cfg, "tma": 1})
    assert torch.allclose(r_ptr, r_tma, rtol=0, atol=1e-4)
    written = ~rb_ptr.isnan()
    assert torch.equal(written, ~rb_tma.isnan())
    assert torch.allclose(rb_ptr[written], rb_tma[written], rtol=0, atol=1e-4)
    _, r_ws = xattn_score_fwd(q, k, **kw, config={"tma": 1, "ws": 1})  # warp-specialized, default tiles
    assert torch.allclose(r_ptr, r_ws, rtol=0, atol=1e-4)


def test_q_cast_inside_the_scoring_kernel_at_16k(device):
    from kernels.xattention.triton_fwd import xattn_score_fwd

    q, k, _, _ = structured_qkv(1, 16384, 8, 4, 128, dtype=torch.bfloat16, device=device, seed=8)
    kw = dict(stride=16, block_size=128, scale=128**-0.5, causal=True)
    cfg = {"fp8": 1, "tma": 1, "num_stages": 3}
    rb_ahead, r_ahead = xattn_score_fwd(q, k, **kw, config=cfg)
    rb_in, r_in = xattn_score_fwd(q, k, **kw, config={**cfg, "q_to_fp8": 1})
    assert torch.allclose(r_ahead, r_in, rtol=0, atol=1e-4)
    written = ~rb_ahead.isnan()
    assert torch.allclose(rb_ahead[written], rb_in[written], rtol=0, atol=1e-4)


def test_scoring_a_subset_of_heads_at_16k(device):
    q, k, _, _ = structured_qkv(1, 16384, 8, 4, 128, dtype=torch.bfloat16, device=device, seed=9)
    kw = dict(stride=16, tau=0.9, block_size=128, impl="triton", config={"fp8": 1})
    full, _ = xattn_select(q, k, **kw)
    heads = torch.tensor([6, 1, 2], device=device)
    sub, _ = xattn_select(q, k, **kw, heads=heads)
    want, got = index_to_mask(full, 128), index_to_mask(sub, 128)
    assert torch.equal(got[:, [1, 2, 6]], want[:, [1, 2, 6]])
    assert not sub.cnt[:, [0, 3, 4, 5, 7]].any()


@pytest.mark.parametrize(("t", "h_kv"), [(4096, 8), (3001, 2)], ids=["T4096-H8x8", "T3001-H8x2"])
def test_bf16_block_sparse_backward_matches_reference(t, h_kv, device):
    q, k, v, _ = structured_qkv(1, t, 8, h_kv, 128, dtype=torch.bfloat16, device=device, seed=4)
    n = -(-t // 128)
    gen = torch.Generator(device=device).manual_seed(4)
    mask = torch.rand(1, 8, n, n, device=device, generator=gen) < 0.3
    mask[..., 0] = True
    mask[..., torch.arange(n), torch.arange(n)] = True
    head_type = torch.zeros(8, dtype=torch.int32, device=device)
    head_type[[2, 5]] = HEAD_STREAMING  # streaming heads' backward in the same launches
    kw = dict(block_size=128, causal=True, head_type=head_type, sink=128, local=1024)
    leaves = [x.requires_grad_(True) for x in (q, k, v)]
    out = block_sparse_attn(*leaves, mask, impl="triton", **kw)
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, do)
    ref_leaves = [x.detach().float().requires_grad_(True) for x in (q, k, v)]
    ref = block_sparse_attn_ref(*ref_leaves, mask, **kw)
    want = torch.autograd.grad(ref, ref_leaves, do.float())
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(f"bf16-{name}", w, g.float(), torch.bfloat16)


def test_bf16_full_mask_backward_matches_sdpa(device):
    t = 16384
    q, k, v = (torch.randn(1, t, 32, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
    n = t // 128
    ones = torch.ones(1, 32, n, n, dtype=torch.bool, device=device)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = block_sparse_attn(*leaves, ones, block_size=128, causal=True, impl="triton")
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, do)
    ref_leaves = [x.float().transpose(1, 2).requires_grad_(True) for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_leaves, is_causal=True)
    want = torch.autograd.grad(ref, ref_leaves, do.float().transpose(1, 2))
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(f"bf16-full-{name}", w.transpose(1, 2), g.float(), torch.bfloat16)
