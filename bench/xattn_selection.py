"""XAttention selection quality with and without the row rule (``row_share``), CPU or GPU.

For the structured inputs of ``bench/prefill_attention.py`` ("diffuse": mild sinks, local windows
and needles; "peaked": strong ones), per stride and rule: the density chosen, ``needles_kept``, the
true attention mass kept over what the best mask with the same number of blocks per row keeps
(``mass_recall_vs_oracle``), the share of all true mass kept, and the output's relative error
against dense attention (first ``err_heads`` heads). Selection only: no timing (speed is
``bench/prefill_attention.py``'s job on the GPU). On the CPU the scoring runs the PyTorch reference.

Writes ``bench/results/xattn_selection.json`` (or ``--out_dir``).

Examples::

    python -m bench.xattn_selection                          # 8k and 16k, 32 heads (CPU: ~10 min)
    python -m bench.xattn_selection --lengths=4096 --heads=8 --out_dir=/tmp/res
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench.common import device_name, parse_flags, write_results
from bench.prefill_attention import mass_recall
from kernels.block_sparse_attention import block_sparse_attn_ref
from kernels.block_sparse_attention.index import index_to_mask, visible_blocks
from kernels.testing import PEAKED, needles_kept, rel_rms, structured_qkv
from kernels.xattention import xattn_select

log = logging.getLogger("bench.xattn_selection")

INPUTS = {
    "diffuse": {},
    "peaked": PEAKED,
}


@dataclasses.dataclass
class SelectionBenchConfig:
    """Settings (override with ``--field=value``)."""

    lengths: str = "8192,16384"
    heads: int = 32
    head_dim: int = 128
    block_size: int = 128
    tau: float = 0.9
    strides: str = "8,16"
    row_shares: str = "0,0.05,0.1,0.2"
    err_heads: int = 4
    seed: int = 0
    out_dir: str = ""


def true_block_mass(q: torch.Tensor, k: torch.Tensor, block_size: int, chunk: int) -> torch.Tensor:
    """Exact attention mass per block pair (stride 1), ``chunk`` heads at a time."""
    impl = "triton" if q.is_cuda else "reference"
    parts = [
        xattn_select(
            q[:, :, i : i + chunk],
            k[:, :, i : i + chunk],
            stride=1,
            tau=1.0,
            block_size=block_size,
            return_mass=True,
            impl=impl,
        )[1]
        for i in range(0, q.shape[2], chunk)
    ]
    return torch.cat(parts, dim=1)


def run_input(name: str, t: int, cfg: SelectionBenchConfig, dev: torch.device, rows: list[dict]) -> None:
    h, d, bs = cfg.heads, cfg.head_dim, cfg.block_size
    seed = cfg.seed + (1 if name == "peaked" else 0)  # as bench/prefill_attention.py
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    q, k, v, needles = structured_qkv(
        1, t, h, h, d, dtype=dtype, device=dev, seed=seed, needle_len=64, needles_per_head=2, **INPUTS[name]
    )
    n = -(-t // bs)
    vis = visible_blocks(t, t, bs, True, dev)
    true = true_block_mass(q, k, bs, chunk=1).masked_fill(~vis, 0.0)
    eh = min(cfg.err_heads, h)
    qe, ke, ve = q[:, :, :eh].float(), k[:, :, :eh].float(), v[:, :, :eh].float()
    dense = torch.nn.functional.scaled_dot_product_attention(
        qe.transpose(1, 2), ke.transpose(1, 2), ve.transpose(1, 2), is_causal=True
    ).transpose(1, 2)  # SDPA's fused CPU/GPU kernels never hold the T x T matrix
    impl = "triton" if dev.type == "cuda" else "reference"
    for stride in [int(s) for s in cfg.strides.split(",")]:
        for rs in [float(x) for x in cfg.row_shares.split(",")]:
            index, _ = xattn_select(
                q, k, stride=stride, tau=cfg.tau, block_size=bs, causal=True, impl=impl, row_share=rs
            )
            keep = index_to_mask(index, n) & vis
            out = torch.cat(  # one head at a time: the reference holds a T x T score matrix
                [
                    block_sparse_attn_ref(
                        qe[:, :, i : i + 1],
                        ke[:, :, i : i + 1],
                        ve[:, :, i : i + 1],
                        keep[:, i : i + 1],
                        block_size=bs,
                        causal=True,
                    )
                    for i in range(eh)
                ],
                dim=2,
            )
            row = {
                "input": name,
                "seq_len": t,
                "stride": stride,
                "tau": cfg.tau,
                "row_share": rs,
                "density": keep.sum().item() / (h * vis.sum().item()),
                "needles_kept": needles_kept(needles, keep.cpu(), bs),
                "mass_recall_vs_oracle": mass_recall(true, keep),
                "kept_true_mass_share": ((true * keep).sum() / true.sum()).item(),
                f"rel_err_vs_dense_first{eh}heads": rel_rms(dense, out.float()),
            }
            rows.append(row)
            log.info("%s", row)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_flags(SelectionBenchConfig(), sys.argv[1:] if argv is None else argv)
    if not 0.0 < cfg.tau <= 1.0:
        raise SystemExit(f"--tau must be in (0, 1], got {cfg.tau}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lengths = [int(x) for x in cfg.lengths.split(",")]
    rows: list[dict] = []
    start = time.time()
    for t, name in tqdm([(t, nm) for t in lengths for nm in INPUTS], desc="inputs"):
        run_input(name, t, cfg, dev, rows)
    headline: dict = {"seconds": round(time.time() - start, 1)}
    for name in INPUTS:
        for rs in sorted({r["row_share"] for r in rows}):
            sel = [r for r in rows if r["input"] == name and r["row_share"] == rs]
            tag = f"{name}_row_share{rs:g}"
            headline[f"{tag}_needles_kept"] = min(r["needles_kept"] for r in sel)
            headline[f"{tag}_mass_recall_vs_oracle"] = min(r["mass_recall_vs_oracle"] for r in sel)
            headline[f"{tag}_density_max"] = max(r["density"] for r in sel)
    path = write_results(
        "xattn_selection",
        rows=rows,
        headline=headline,
        config=dataclasses.asdict(cfg),
        device=device_name(),
        out_dir=Path(cfg.out_dir) if cfg.out_dir else None,
    )
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
