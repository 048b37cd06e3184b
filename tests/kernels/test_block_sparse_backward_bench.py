"""bench.block_sparse_backward end to end at toy sizes (Triton interpreter on the CPU)."""

from bench.block_sparse_backward import SWEEP, BackwardBenchConfig, run_length


def test_run_length_rows_and_gradient_error():
    cfg = BackwardBenchConfig(heads=2, head_dim=64, block_size=128, densities="0.5")
    rows: list[dict] = []
    res = run_length(256, cfg, rows, sweep=True)
    # the full causal mask is dense attention: its gradients are SDPA's (fp32 here)
    assert max(res["full_mask_grad_rel_err_vs_sdpa"].values()) < 1e-4
    assert res["full_mask_step_ms"] > 0
    assert res["step_speedup_at_50pct"] > 0
    kinds = [r["kind"] for r in rows]
    assert kinds.count("full") == 1
    assert kinds.count("density") == 1
    assert kinds.count("bwd_config") == len(SWEEP)
    assert all("bwd_ms" in r for r in rows if r["kind"] == "bwd_config")
