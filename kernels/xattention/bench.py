"""XAttention scoring + selection time (CUDA only): ``python -m kernels.xattention.bench``.

TFLOPS counts the scoring GEMM only: 2 · (T/S)² · S · D · H / 2 (causal) = T² · D · H / S.
"""

from __future__ import annotations

import torch
import triton
import triton.testing

from kernels.xattention.op import xattn_select

H, D = 32, 128


@triton.testing.perf_report(
    triton.testing.Benchmark(
        x_names=["t"],
        x_vals=[8192, 16384, 32768, 65536],
        line_arg="variant",
        line_vals=["s8", "s16", "s16fp8"],
        line_names=["stride 8", "stride 16", "stride 16 fp8"],
        ylabel="TFLOPS",
        plot_name="xattention_scoring",
        args={},
    )
)
def bench(t: int, variant: str) -> float:
    """Scoring TFLOPS of one variant at length ``t``."""
    q, k = (torch.randn(1, t, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    stride = 8 if variant == "s8" else 16
    cfg = {"fp8": 1} if variant.endswith("fp8") else None
    ms = triton.testing.do_bench(
        lambda: xattn_select(q, k, stride=stride, tau=0.9, impl="triton", config=cfg), return_mode="median"
    )
    return t * t * D * H / stride / ms / 1e9


if __name__ == "__main__":
    bench.run(print_data=True)
