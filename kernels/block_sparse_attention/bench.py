"""Block-sparse attention vs SDPA flash (CUDA only): ``python -m kernels.block_sparse_attention.bench``.

TFLOPS = 4 · Tq · Tk · D · H · (kept share of all blocks) / time, causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.testing

from kernels.block_sparse_attention.index import mask_to_index
from kernels.block_sparse_attention.triton_fwd import block_sparse_attn_fwd

H, D, BS = 32, 128, 128


@triton.testing.perf_report(
    triton.testing.Benchmark(
        x_names=["t"],
        x_vals=[4096, 8192, 16384, 32768],
        line_arg="provider",
        line_vals=["sdpa", "full", "10pct"],
        line_names=["SDPA flash", "block-sparse full causal", "block-sparse 10%"],
        ylabel="TFLOPS",
        plot_name="block_sparse_attention",
        args={},
    )
)
def bench(t: int, provider: str) -> float:
    """TFLOPS of one provider at length ``t``."""
    q, k, v = (torch.randn(1, t, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    n = -(-t // BS)
    keep = torch.ones(1, H, n, n, dtype=torch.bool, device="cuda").tril()
    if provider == "10pct":
        keep &= torch.rand(1, H, n, n, device="cuda") < 0.1
        keep |= torch.eye(n, dtype=torch.bool, device="cuda")
    density = keep.sum().item() / (H * n * n)
    index = mask_to_index(keep, t, t, BS, causal=True)
    if provider == "sdpa":

        def fn():
            return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=True)

    else:

        def fn():
            return block_sparse_attn_fwd(q, k, v, index, block_size=BS, scale=D**-0.5, causal=True)

    ms = triton.testing.do_bench(fn, return_mode="median")
    return 4 * t * t * D * H * density / ms / 1e9


if __name__ == "__main__":
    bench.run(print_data=True)
