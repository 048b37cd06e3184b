"""Block-sparse attention: reference vs SDPA, Triton (interpreter on CPU) vs reference, streaming heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.block_sparse_attention import (
    HEAD_STREAMING,
    block_sparse_attn,
    block_sparse_attn_ref,
    index_to_mask,
    mask_to_index,
)
from kernels.testing import assert_close, structured_qkv


def _sdpa64(q, k, v, causal):
    qh, kh, vh = (x.double().transpose(1, 2) for x in (q, k, v))
    rep = q.shape[2] // k.shape[2]
    kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
    t_q, t_k = q.shape[1], k.shape[1]
    mask = torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q) if causal else None
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(
    ("t_q", "t_k", "bs"),
    [(63, 63, 64), (130, 200, 64), (1, 77, 128)],
    ids=["T63-bs64", "Tq130-Tk200-bs64", "Tq1-Tk77-bs128"],
)
def test_reference_all_ones_equals_sdpa(t_q, t_k, bs, causal):
    torch.manual_seed(0)
    q = torch.randn(2, t_q, 4, 32)
    k, v = torch.randn(2, t_k, 2, 32), torch.randn(2, t_k, 2, 32)
    ones = torch.ones(2, 4, -(-t_q // bs), -(-t_k // bs), dtype=torch.bool)
    out = block_sparse_attn_ref(q, k, v, ones, block_size=bs, causal=causal)
    assert_close("ref-vs-sdpa", _sdpa64(q, k, v, causal), out, torch.float32)


CASES = [
    # (B, Tq, Tk, Hq, Hkv, D, block, causal, streaming heads)
    (2, 200, 200, 4, 2, 64, 64, True, (1,)),
    (1, 63, 63, 2, 1, 64, 64, True, ()),
    (1, 130, 300, 2, 2, 64, 64, True, (0,)),
    (1, 1, 200, 2, 1, 64, 64, True, ()),
    (1, 250, 250, 2, 1, 128, 128, False, ()),
    (1, 260, 260, 2, 2, 64, 128, True, (1,)),
]


def _case_id(c):
    b, tq, tk, hq, hkv, d, bs, causal, st = c
    return f"B{b}-Tq{tq}-Tk{tk}-H{hq}x{hkv}-D{d}-bs{bs}-{'causal' if causal else 'full'}-st{len(st)}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_triton_matches_reference(case, dtype, device):
    b, t_q, t_k, h_q, h_kv, d, bs, causal, stream = case
    torch.manual_seed(1)
    q, k, v, _ = structured_qkv(
        b,
        t_k,
        h_q,
        h_kv,
        d,
        dtype=dtype,
        device=device,
        seed=7,
        needle_len=16,
        needles_per_head=int(t_k >= 64),
    )
    q = q[:, t_k - t_q :]
    mask = torch.rand(b, h_q, -(-t_q // bs), -(-t_k // bs), device=device) < 0.5
    mask[..., 0] = True
    head_type = torch.zeros(h_q, dtype=torch.int32, device=device)
    head_type[list(stream)] = HEAD_STREAMING
    kw = dict(block_size=bs, causal=causal, head_type=head_type, sink=20, local=70)
    ref = block_sparse_attn_ref(q, k, v, mask, **kw)
    out = block_sparse_attn(q, k, v, mask, impl="triton", **kw)
    assert_close("triton-vs-ref", ref.float(), out.float(), dtype)


def test_full_index_equals_sdpa(device):
    torch.manual_seed(2)
    q, k, v, _ = structured_qkv(1, 190, 4, 1, 64, dtype=torch.float16, device=device, seed=3, needle_len=16)
    ones = torch.ones(1, 4, 3, 3, dtype=torch.bool, device=device)
    index = mask_to_index(ones, 190, 190, 64, causal=True)
    out = block_sparse_attn(q, k, v, block_index=index, block_size=64, causal=True, impl="triton")
    assert_close("full-vs-sdpa", _sdpa64(q.cpu(), k.cpu(), v.cpu(), True), out.cpu().float(), torch.float16)


def test_streaming_head_ignores_keys_outside_window(device):
    torch.manual_seed(3)
    q, k, v, _ = structured_qkv(1, 256, 2, 2, 64, dtype=torch.float32, device=device, needles_per_head=0)
    ones = torch.ones(1, 2, 4, 4, dtype=torch.bool, device=device)
    head_type = torch.tensor([0, HEAD_STREAMING], dtype=torch.int32, device=device)
    kw = dict(block_size=64, causal=True, head_type=head_type, sink=16, local=64, impl="triton")
    out = block_sparse_attn(q, k, v, ones, **kw)
    v2 = v.clone()
    v2[:, 100:150] += 5.0  # keys 100..149: outside the window of the last queries (positions >= 214)
    out2 = block_sparse_attn(q, k, v2, ones, **kw)
    assert torch.equal(out[:, 214:, 1], out2[:, 214:, 1])
    assert (out[:, 214:, 0] - out2[:, 214:, 0]).abs().max() > 1e-3


def test_mask_index_roundtrip():
    torch.manual_seed(4)
    mask = torch.rand(2, 3, 5, 5) < 0.4
    index = mask_to_index(mask, 300, 300, 64, causal=True)
    causal_blocks = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(index_to_mask(index, 5), mask & causal_blocks)
    assert bool((index.n_full <= index.cnt).all())


def test_backward_matches_reference():
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 100, 2, 64, requires_grad=True) for _ in range(3))
    mask = torch.rand(1, 2, 2, 2) < 0.7
    mask[..., 0] = True
    out = block_sparse_attn(q, k, v, mask, block_size=64, causal=True, impl="triton")
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = block_sparse_attn_ref(q, k, v, mask, block_size=64, causal=True)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for name, a, r in zip("qkv", grads, ref_grads, strict=True):
        assert_close(f"d{name}", r, a, torch.float32)


def test_bad_inputs_raise_clear_errors():
    q = torch.randn(1, 64, 3, 64)
    k = torch.randn(1, 64, 2, 64)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        block_sparse_attn(q, k, k, torch.ones(1, 3, 1, 1, dtype=torch.bool), block_size=64)
    q = torch.randn(1, 64, 2, 64)
    with pytest.raises(ValueError, match="block_mask must be"):
        block_sparse_attn(q, k, k, torch.ones(1, 2, 2, 2, dtype=torch.bool), block_size=64)
    with pytest.raises(ValueError, match="block_size 32"):
        block_sparse_attn(q, k, k, torch.ones(1, 2, 2, 2, dtype=torch.bool), block_size=32, impl="triton")


def test_density_mask_keeps_the_asked_share_of_causal_blocks():
    from kernels.testing import density_mask

    n = 40
    mask = density_mask(3, n, 0.25, torch.Generator().manual_seed(0), "cpu")
    assert mask.shape == (1, 3, n, n)
    assert not mask.triu(1).any(), "a block above the diagonal"
    assert mask.diagonal(dim1=-2, dim2=-1).all(), "the diagonal block must be kept"
    kept = mask.sum(-1).float()
    want = torch.clamp(torch.round(0.25 * torch.arange(1, n + 1).float()), min=1)
    assert torch.equal(kept, want.expand_as(kept))
