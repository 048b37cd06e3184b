"""Block-sparse attention training step (forward + Triton backward) against SDPA's, on a CUDA device.

Causal, bf16, B=1, 32 heads, head dim 128, block 128. For each length: SDPA (flash backend) forward +
backward, ours with the full causal mask, and ours at fixed densities of the causal blocks (diagonal
always kept), all timed in the same process (median of CUDA-event timings); the full-mask gradients'
relative RMS error against SDPA's; and, at the middle length, a small sweep of the backward's tile
config. Writes ``bench/results/block_sparse_backward.json``::

    python -m bench.block_sparse_backward [--lengths=8192,16384,32768] [--out_dir=DIR]

Headline: ``train_step_full_mask_vs_sdpa_32k`` (time ratio, forward + backward) and
``train_step_speedup_at_10pct_32k``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import device_name, parse_flags, write_results
from bench.prefill_attention import timed
from kernels.block_sparse_attention import block_sparse_attn, mask_to_index
from kernels.block_sparse_attention.triton_bwd import block_sparse_attn_bwd
from kernels.block_sparse_attention.triton_fwd import block_sparse_attn_fwd
from kernels.testing import density_mask, rel_rms

log = logging.getLogger("bench.block_sparse_backward")


@dataclasses.dataclass
class BackwardBenchConfig:
    """Benchmark settings (override with ``--field=value``)."""

    lengths: str = "8192,16384,32768"
    heads: int = 32
    head_dim: int = 128
    block_size: int = 128
    densities: str = "0.5,0.1"
    sweep: int = 1  # 1: time a few backward tile configs at the middle length
    out_dir: str = ""
    seed: int = 0


def _tiles(bm, bn, nw, ns, kv_bm, kv_bn, kv_nw, kv_ns=2) -> dict[str, int]:
    """One backward config: dQ tiles and launch, then dK/dV's (all explicit, defaults not consulted)."""
    return {
        "block_m": bm,
        "block_n": bn,
        "num_warps": nw,
        "num_stages": ns,
        "dkdv_block_m": kv_bm,
        "dkdv_block_n": kv_bn,
        "dkdv_num_warps": kv_nw,
        "dkdv_num_stages": kv_ns,
    }


SWEEP = [
    _tiles(64, 64, 4, 2, 64, 64, 4),  # the tenth session's default, both kernels alike
    _tiles(64, 64, 8, 2, 64, 64, 8),
    _tiles(32, 64, 4, 2, 32, 64, 4),
    # dK/dV on wider key tiles (FlashAttention-2 walks 128 keys per program)
    _tiles(64, 64, 4, 2, 64, 128, 8),
    _tiles(64, 64, 4, 2, 32, 128, 8),
    # dQ on taller query tiles
    _tiles(128, 64, 8, 2, 64, 64, 4),
    _tiles(128, 64, 8, 2, 64, 128, 8),  # the default now
    _tiles(128, 32, 8, 2, 64, 128, 8),
]


def _step(q, k, v, do, fn):
    """One forward + backward; gradients of q, k, v."""
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    out = fn(*leaves)
    return torch.autograd.grad(out, leaves, do)


def run_length(t: int, cfg: BackwardBenchConfig, rows: list[dict], sweep: bool) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: interpreter smoke runs
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    h, d, bs = cfg.heads, cfg.head_dim, cfg.block_size
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    q, k, v, do = (torch.randn(1, t, h, d, device=dev, dtype=dtype, generator=gen) for _ in range(4))
    reps = 3 if t >= 32768 else 5
    n = -(-t // bs)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(
            *(x.transpose(1, 2) for x in (q, k, v)), is_causal=True
        ).transpose(1, 2)

    backend = torch.nn.attention.SDPBackend.FLASH_ATTENTION if dev.type == "cuda" else None
    with torch.nn.attention.sdpa_kernel(backend) if backend else contextlib.nullcontext():
        t_sdpa = timed(lambda: _step(q, k, v, do, sdpa), reps)
        t_sdpa_fwd = timed(lambda: sdpa(q, k, v), reps)
        want = _step(q, k, v, do, sdpa)
    res = {"seq_len": t, "sdpa_step_ms": t_sdpa, "sdpa_fwd_ms": t_sdpa_fwd}

    def ours(index):
        def fn(q, k, v):
            return block_sparse_attn(q, k, v, block_index=index, block_size=bs, causal=True, impl="triton")

        return fn

    full = mask_to_index(torch.ones(1, h, n, n, dtype=torch.bool, device=dev), t, t, bs, causal=True)
    t_full = timed(lambda: _step(q, k, v, do, ours(full)), reps)
    got = _step(q, k, v, do, ours(full))
    res["full_mask_step_ms"] = t_full
    res["full_mask_step_vs_sdpa"] = t_full / t_sdpa
    res["full_mask_grad_rel_err_vs_sdpa"] = {
        name: rel_rms(w.float(), g.float()) for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True)
    }
    rows.append({"kind": "full", **res})
    for dens in (float(x) for x in cfg.densities.split(",")):
        idx = mask_to_index(density_mask(h, n, dens, gen, dev), t, t, bs, causal=True)
        t_d = timed(lambda idx=idx: _step(q, k, v, do, ours(idx)), reps)
        res[f"step_speedup_at_{round(dens * 100)}pct"] = t_sdpa / t_d
        rows.append(
            {
                "kind": "density",
                "seq_len": t,
                "density": dens,
                "step_ms": t_d,
                "speedup_vs_sdpa": t_sdpa / t_d,
            }
        )
    if sweep:
        res["sweep"] = sweep_configs(q, k, v, do, full, bs, reps, rows)
    return res


def sweep_configs(q, k, v, do, index, bs, reps, rows) -> list[dict]:
    """Backward alone (forward's output and LSE given) for each tile config of ``SWEEP``."""
    scale = q.shape[-1] ** -0.5
    out, lse = block_sparse_attn_fwd(q, k, v, index, block_size=bs, scale=scale, causal=True, return_lse=True)
    found = []
    for config in SWEEP:
        try:
            ms = timed(
                lambda config=config: block_sparse_attn_bwd(
                    do,
                    q,
                    k,
                    v,
                    out,
                    lse,
                    index,
                    block_size=bs,
                    scale=scale,
                    causal=True,
                    config=config,
                ),
                reps,
            )
            found.append({**config, "bwd_ms": ms})
        except Exception as e:  # a config over the card's resources
            found.append({**config, "error": str(e)[:200]})
        rows.append({"kind": "bwd_config", "seq_len": q.shape[1], **found[-1]})
        log.info("bwd config %s", found[-1])
    return found


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_flags(BackwardBenchConfig(), sys.argv[1:])
    if not torch.cuda.is_available():
        raise SystemExit("block_sparse_backward needs a CUDA device")
    lengths = [int(x) for x in cfg.lengths.split(",")]
    rows: list[dict] = []
    per = {}
    for t in lengths:
        per[t] = run_length(t, cfg, rows, bool(cfg.sweep) and t == lengths[len(lengths) // 2])
        log.info("T=%d %s", t, json.dumps({k: v for k, v in per[t].items() if k != "sweep"}))
        torch.cuda.empty_cache()
    top = per[max(lengths)]
    tag = f"{max(lengths) // 1024}k"
    headline = {
        "seq_len": max(lengths),
        f"train_step_full_mask_vs_sdpa_{tag}": top["full_mask_step_vs_sdpa"],
        f"train_step_speedup_at_10pct_{tag}": top.get("step_speedup_at_10pct"),
        "full_mask_grad_rel_err_vs_sdpa_max": max(
            max(r["full_mask_grad_rel_err_vs_sdpa"].values()) for r in per.values()
        ),
    }
    path = write_results(
        "block_sparse_backward",
        rows=rows,
        headline=headline,
        config=dataclasses.asdict(cfg),
        device=device_name(),
        out_dir=Path(cfg.out_dir) if cfg.out_dir else None,
    )
    log.info("wrote %s\n%s", path, json.dumps(headline, indent=1))


if __name__ == "__main__":
    main()
