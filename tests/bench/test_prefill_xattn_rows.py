"""bench.prefill_attention.xattn_rows at toy size on the CPU (Triton interpreter): rows and their keys."""

import torch
import torch.nn.functional as F

from bench.prefill_attention import PrefillBenchConfig, xattn_rows
from kernels.testing import structured_qkv


def test_xattn_rows_time_half_streaming_end_to_end():
    cfg = PrefillBenchConfig(heads=2, head_dim=64, block_size=64, strides="16", oracle_heads=2, row_share=0.1)
    t = 512
    q, k, v, needles = structured_qkv(1, t, 2, 2, 64, dtype=torch.float16, seed=1, needle_len=32)
    dense = F.scaled_dot_product_attention(
        *(x.transpose(1, 2).float() for x in (q, k, v)), is_causal=True
    ).transpose(1, 2)
    rows: list[dict] = []
    res = {"sparse_10pct_ms": 1.0}
    xattn_rows("peaked", (q, k, v, needles, dense), t, cfg, rows, res, 1, 1.0, sweep=False)
    fp8_rows = [r for r in rows if r["kind"] == "xattn" and r["fp8_scoring"]]
    assert len(fp8_rows) == 2  # tau only, and tau + row rule
    for r in fp8_rows:
        assert "error" not in r
        assert r["half_streaming_scoring_ms"] > 0
        assert r["half_streaming_e2e_ms"] > 0
        assert 0 < r["density"] <= 1
        assert r["half_streaming_rel_err_vs_dense"] < 1.5
