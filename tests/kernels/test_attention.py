"""kernels.attention: dense path, and routing of long causal prefill to the sparse kernels."""

from __future__ import annotations

import pytest
import torch

from kernels import SparsePrefillConfig, attention
from kernels.block_sparse_attention import block_sparse_attn_ref
from kernels.testing import PEAKED, assert_close, structured_qkv


def _dense(q, k, v):
    return attention(q, k, v, causal=True)


def test_dense_gqa_matches_manual():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 20, 4, 16), torch.randn(2, 20, 2, 16), torch.randn(2, 20, 2, 16)
    out = attention(q, k, v)
    kk, vv = k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kk) / 4.0
    s = s.masked_fill(torch.ones(20, 20, dtype=torch.bool).triu(1), float("-inf"))
    want = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vv)
    assert_close("dense", want, out, torch.float32)
    # decode-style chunk: queries aligned to the end of the keys
    out_tail = attention(q[:, -3:], k, v)
    assert_close("chunk", want[:, -3:], out_tail, torch.float32)


def _manual(q, k, v, allowed):
    """Plain GQA attention: K/V repeated per query head, ``allowed`` `(B, Hq, Tq, Tk)`."""
    rep = q.shape[2] // k.shape[2]
    kk, vv = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kk) * q.shape[-1] ** -0.5
    return torch.einsum("bhqk,bkhd->bqhd", s.masked_fill(~allowed, float("-inf")).softmax(-1), vv)


@pytest.mark.parametrize("tq", [1, 4])
def test_gqa_with_a_key_mask_matches_manual(tq):
    """Decode with a per-sample key mask (padding, as the policy's static cache): K/V never repeated."""
    g = torch.Generator().manual_seed(3)
    b, tk, hq, hkv, d = 3, 37, 6, 2, 16
    q = torch.randn(b, tq, hq, d, generator=g)
    k, v = torch.randn(b, tk, hkv, d, generator=g), torch.randn(b, tk, hkv, d, generator=g)
    k[:, 5] += q[:, -1].mean(1)[:, None] * 3  # a key every query head wants: a needle to mask
    keep = torch.rand(b, tk, generator=g) > 0.3
    keep[:, 0] = True
    keep[1, 5] = False  # sample 1 must not see the needle
    mask = keep[:, None, None, :].expand(b, 1, tq, tk)
    want = _manual(q, k, v, mask.expand(b, hq, tq, tk))
    assert_close("masked decode", want, attention(q, k, v, attn_mask=mask), torch.float32)
    # a mask that differs per head cannot be folded: the repeated-K/V path must still be exact
    per_head = torch.rand(b, hq, tq, tk, generator=g) > 0.2
    per_head[..., 0] = True
    assert_close(
        "per-head mask", _manual(q, k, v, per_head), attention(q, k, v, attn_mask=per_head), torch.float32
    )


def test_short_prefill_stays_dense():
    torch.manual_seed(1)
    q, k, v, _ = structured_qkv(1, 256, 2, 1, 64, seed=1, needle_len=16)
    cfg = SparsePrefillConfig(method="xattention", min_len=512, tau=0.5, block_size=64, impl="triton")
    assert torch.equal(attention(q, k, v, sparse=cfg), _dense(q, k, v))


def test_long_prefill_routes_to_xattention(device):
    torch.manual_seed(2)
    q, k, v, _ = structured_qkv(1, 256, 2, 1, 64, dtype=torch.float16, device=device, seed=2, needle_len=16)
    cfg = SparsePrefillConfig(
        method="xattention", min_len=128, tau=1.0, block_size=64, stride=8, impl="triton"
    )
    out = attention(q, k, v, sparse=cfg)
    assert_close("xattn-tau1-vs-dense", _dense(q, k, v).float(), out.float(), torch.float16)
    low = attention(
        q,
        k,
        v,
        sparse=SparsePrefillConfig(method="xattention", min_len=128, tau=0.3, block_size=64, impl="triton"),
    )
    assert (low.float() - out.float()).abs().max() > 1e-3, "tau=0.3 should drop some blocks"


@pytest.mark.parametrize(("rule", "off", "on"), [("row_share", 0.0, 0.05), ("dense_above", 1.0, 0.5)])
def test_selection_rules_reach_the_selection(rule, off, on, device):
    """SparsePrefillConfig.row_share and .dense_above reach the selection: output as xattention_prefill."""
    from kernels.xattention import xattention_prefill

    q, k, v, _ = structured_qkv(
        1,
        1024,
        2,
        2,
        64,
        dtype=torch.float16,
        device=device,
        seed=6,
        needle_len=64,
        needles_per_head=2,
        **PEAKED,
    )
    outs = {}
    for value in (off, on):
        kw = {"row_share": 0.0, rule: value}
        cfg = SparsePrefillConfig(
            method="xattention", min_len=128, tau=0.9, block_size=128, stride=8, impl="triton", **kw
        )
        outs[value] = attention(q, k, v, sparse=cfg)
        want = xattention_prefill(q, k, v, stride=8, tau=0.9, block_size=128, impl="triton", **kw)
        assert torch.equal(outs[value], want)
    dense = _dense(q, k, v).float()
    err = {value: ((o.float() - dense).norm() / dense.norm()).item() for value, o in outs.items()}
    assert err[on] < err[off], f"{rule}={on} should bring the output closer to dense: {err}"


def test_streaming_method_uses_windows(device):
    torch.manual_seed(3)
    q, k, v, _ = structured_qkv(1, 300, 2, 2, 64, dtype=torch.float32, device=device, seed=3, needle_len=16)
    cfg = SparsePrefillConfig(
        method="streaming", min_len=64, block_size=64, streaming_heads=[1], sink=16, local=64, impl="triton"
    )
    out = attention(q, k, v, sparse=cfg)
    ones = torch.ones(1, 2, 5, 5, dtype=torch.bool, device=device)
    ref = block_sparse_attn_ref(
        q,
        k,
        v,
        ones,
        block_size=64,
        causal=True,
        head_type=torch.tensor([0, 1], device=device),
        sink=16,
        local=64,
    )
    assert_close("streaming", ref, out, torch.float32)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"method": "flash"}, "method"),
        ({"tau": 1.5}, "tau"),
        ({"row_share": 1.5}, "row_share"),
        ({"dense_above": 0.0}, "dense_above"),
        ({"dense_above": 1.01}, "dense_above"),
        ({"stride": 3}, "stride"),
        ({"block_size": 96}, "block_size"),
        ({"method": "streaming"}, "streaming_heads"),
        ({"method": "streaming", "streaming_heads_per_layer": [[], []]}, "streaming_heads"),
        ({"dense_layers": [-1]}, "dense_layers"),
    ],
)
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SparsePrefillConfig(**kw)


def test_per_layer_plan_dense_layers_and_streaming_heads(device):
    """``dense_layers`` keeps a layer dense; ``streaming_heads_per_layer`` gives each layer its heads."""
    q, k, v, _ = structured_qkv(1, 300, 2, 2, 64, dtype=torch.float32, device=device, seed=3, needle_len=16)
    cfg = SparsePrefillConfig(
        method="streaming",
        min_len=64,
        block_size=64,
        streaming_heads_per_layer=[[0], [1], []],
        dense_layers=[2],
        sink=16,
        local=64,
        impl="triton",
    )
    ones = torch.ones(1, 2, 5, 5, dtype=torch.bool, device=device)
    for layer, streaming in ((0, [1, 0]), (1, [0, 1])):
        out = attention(q, k, v, sparse=cfg, layer=layer)
        ht = torch.tensor(streaming, device=device)
        ref = block_sparse_attn_ref(
            q, k, v, ones, block_size=64, causal=True, head_type=ht, sink=16, local=64
        )
        assert_close(f"layer {layer}", ref, out, torch.float32)
    assert torch.equal(attention(q, k, v, sparse=cfg, layer=2), _dense(q, k, v))  # a dense layer
    no_heads = SparsePrefillConfig(method="streaming", min_len=64, streaming_heads_per_layer=[[0], []])
    assert torch.equal(attention(q, k, v, sparse=no_heads, layer=1), _dense(q, k, v))  # nothing streams: SDPA
    with pytest.raises(ValueError, match="covers 3 layers, attention was called for layer 3"):
        attention(q, k, v, sparse=cfg, layer=3)
    with pytest.raises(ValueError, match="needs the layer index"):
        attention(q, k, v, sparse=cfg)
    shared = SparsePrefillConfig(method="streaming", min_len=64, streaming_heads=[1], dense_layers=[0])
    assert shared.heads_for_layer(None) == shared.heads_for_layer(5) == [1]
