"""Streaming-head profiler: exact outside-window mass and head picking on planted patterns."""

from __future__ import annotations

import pytest
import torch

from kernels.attention import SparsePrefillConfig
from kernels.block_sparse_attention import HEAD_MASKED, HEAD_STREAMING
from kernels.streaming_heads import calibrate_sparse_prefill, mass_outside_window, profile_streaming_heads
from kernels.testing import PEAKED, structured_qkv


def test_mass_outside_window_matches_brute_force():
    torch.manual_seed(0)
    q, k = torch.randn(2, 40, 2, 16), torch.randn(2, 40, 1, 16)
    got = mass_outside_window(q, k, sink=3, local=8, max_chunk_elems=100)
    s = torch.einsum("bqhd,bkd->bhqk", q.double(), k[:, :, 0].double()) * 16**-0.5
    s = s.masked_fill(torch.ones(40, 40, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.softmax(s, -1)
    i, j = torch.arange(40)[:, None], torch.arange(40)[None, :]
    outside = ~((j < 3) | (i - j < 8))
    want = (p * outside)[:, :, 11:].sum(-1).mean(dim=(0, 2))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_profiler_picks_planted_streaming_heads():
    torch.manual_seed(1)
    calib = []
    for seed in range(2):
        q, k, _, _ = structured_qkv(
            1,
            512,
            4,
            2,
            64,
            seed=seed,
            needle_len=32,
            needles_per_head=4,
            streaming_heads=(1, 2),
            needle_logit=16.0,
        )
        calib.append((q, k))
    prof = profile_streaming_heads(calib, sink=16, local=64, ratio=0.5, max_outside=0.5)
    assert prof.streaming_heads == (1, 2)
    assert prof.head_type.tolist() == [HEAD_MASKED, HEAD_STREAMING, HEAD_STREAMING, HEAD_MASKED]
    strict = profile_streaming_heads(calib, sink=16, local=64, ratio=0.5, max_outside=0.0)
    assert strict.streaming_heads == ()


def test_profiler_rejects_empty_calibration():
    with pytest.raises(ValueError, match="calibration is empty"):
        profile_streaming_heads([], sink=4, local=8)


def test_calibration_plans_each_layer():
    """Layer 0 diffuse (noise logits: XAttention keeps most blocks) goes dense; layer 1 (sinks,
    local windows, needles) keeps XAttention and streams its two local-only heads; layer 2 has no
    local-only head and streams none."""
    g = torch.Generator().manual_seed(0)
    t = 1024  # 16 blocks: the forced first and diagonal blocks are 23 % of the visible ones
    diffuse = [(torch.randn(1, t, 4, 64, generator=g) * 0.3, torch.randn(1, t, 2, 64, generator=g) * 0.3)]
    kw = dict(seed=2, needle_len=32, needles_per_head=4, **PEAKED)
    q1, k1, _, _ = structured_qkv(1, t, 4, 2, 64, streaming_heads=(1, 2), **kw)
    q2, k2, _, _ = structured_qkv(1, t, 4, 2, 64, **kw)
    base = SparsePrefillConfig(
        method="xattention", min_len=64, block_size=64, stride=8, sink=16, local=64, impl="reference"
    )
    cfg, report = calibrate_sparse_prefill(
        [diffuse, [(q1, k1)], [(q2, k2)]], base, ratio=0.5, max_outside=0.05, dense_density=0.5
    )
    assert cfg.dense_layers == [0]
    assert cfg.streaming_heads_per_layer == [[], [1, 2], []]
    assert cfg.streaming_heads == []
    assert report[0].dense
    assert report[0].xattn_density > 0.5
    assert not report[1].dense
    assert report[1].xattn_density < 0.5
    assert report[1].streaming_heads == (1, 2)
    assert len(report[2].outside_mass) == 4
    assert (cfg.tau, cfg.stride, cfg.method) == (base.tau, base.stride, base.method)
    # the streaming method has no density test: nothing goes dense
    streaming, _ = calibrate_sparse_prefill(
        [diffuse, [(q1, k1)]],
        SparsePrefillConfig(method="streaming", streaming_heads=[0], sink=16, local=64),
        ratio=0.5,
        max_outside=0.05,
    )
    assert streaming.dense_layers == []
    assert streaming.streaming_heads_per_layer[1] == [1, 2]
    with pytest.raises(ValueError, match="every layer"):
        calibrate_sparse_prefill([[(q1, k1)], []], base)
    with pytest.raises(ValueError, match="dense_density"):
        calibrate_sparse_prefill([[(q1, k1)]], base, dense_density=0.0)
