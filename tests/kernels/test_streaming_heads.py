"""Streaming-head profiler: exact outside-window mass and head picking on planted patterns."""

from __future__ import annotations

import pytest
import torch

from kernels.block_sparse_attention import HEAD_MASKED, HEAD_STREAMING
from kernels.streaming_heads import mass_outside_window, profile_streaming_heads
from kernels.testing import structured_qkv


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
