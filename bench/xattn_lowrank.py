"""XAttention with low-rank scoring: selection quality at half the scoring GEMM (CPU, reference code).

``xattn_select(..., score_rank=r)`` scores blocks on ``q P`` and ``k P``, ``P`` the top-``r`` principal
directions of each head's keys (``kernels/xattention/lowrank.py``), so the antidiagonal GEMM costs
``r / D`` of the full one. This measures what that costs in selection quality, on the inputs of
``bench/prefill_attention.py``: the structured synthetic ones (``diffuse``: sinks, local windows, two
needles a head; ``peaked``: the same, sharper) at head dim 128 and the learned layers captured from
the small language model (``--qk_dir``: ``lm_l<L>_{qa,qb,k}.pt``, head dim 64), each with the full
head dimension and with half of it. Per row: the true attention mass the mask keeps over the best
mask with as many blocks per row (``mass_recall_vs_oracle``), the causal density, and the planted
needles kept (synthetic).

    python -m bench.xattn_lowrank [--seq_lens=8192,16384] [--qk_dir=outputs/lm_qk]

Timing needs the GPU: ``bench/prefill_attention.py --score_rank=64`` times the same selection there.
Results: ``bench/results/xattn_lowrank.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.prefill_attention import mass_recall
from kernels.block_sparse_attention import index_to_mask
from kernels.block_sparse_attention.index import visible_blocks
from kernels.testing import PEAKED, needles_kept, structured_qkv
from kernels.xattention import antidiagonal_block_mass_ref, xattn_select


def evaluate(
    q, k, needles, *, name: str, stride: int, block_size: int, tau: float, row_share: float
) -> list[dict]:
    """One row per score rank (full, half) for one input."""
    t, h, d = q.shape[1], q.shape[2], q.shape[3]
    n = t // block_size
    true = antidiagonal_block_mass_ref(q, k, stride=1, block_size=block_size)
    vis = visible_blocks(t, t, block_size, True, "cpu")
    rows = []
    for rank in (0, d // 2):
        t0 = time.perf_counter()
        index, _ = xattn_select(
            q,
            k,
            stride=stride,
            tau=tau,
            block_size=block_size,
            impl="reference",
            row_share=row_share,
            score_rank=rank,
        )
        keep = index_to_mask(index, n) & vis
        rows.append(
            {
                "input": name,
                "seq_len": t,
                "heads": h,
                "head_dim": d,
                "score_rank": rank or d,
                "scoring_gemm_share": (rank or d) / d,
                "stride": stride,
                "block_size": block_size,
                "tau": tau,
                "row_share": row_share,
                "mass_recall_vs_oracle": mass_recall(true, keep),
                "density": keep.sum().item() / (vis.sum().item() * h * q.shape[0]),
                "needles_kept": needles_kept(needles, keep, block_size) if needles else None,
                "select_s_cpu": round(time.perf_counter() - t0, 2),
            }
        )
        print({k_: round(v, 4) if isinstance(v, float) else v for k_, v in rows[-1].items()}, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    from bench.common import write_results
    from bench.xattn_estimators import load_layer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq_lens", default="8192,16384")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--row_share", type=float, default=0.1)
    ap.add_argument("--qk_dir", type=Path, default=None, help="learned-layer dumps (bench.xattn_estimators)")
    ap.add_argument("--layers", default="0,3")
    ap.add_argument("--out_dir", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows: list[dict] = []
    for t in (int(x) for x in args.seq_lens.split(",")):
        for name, kw in (("diffuse", {}), ("peaked", PEAKED)):
            q, k, _, needles = structured_qkv(
                1, t, args.heads, args.heads, 128, seed=0, needle_len=64, needles_per_head=2, **kw
            )
            rows += evaluate(
                q,
                k,
                needles,
                name=name,
                stride=args.stride,
                block_size=128,
                tau=args.tau,
                row_share=args.row_share,
            )
    if args.qk_dir is not None:
        for layer in (int(x) for x in args.layers.split(",")):
            q, k = load_layer(args.qk_dir, layer, 8192)
            rows += evaluate(
                q, k, [], name=f"learned_l{layer}", stride=args.stride, block_size=64, tau=args.tau,
                row_share=args.row_share,
            )  # fmt: skip
    head: dict[str, float] = {}
    for r in rows:
        key = f"{r['input']}_{r['seq_len'] // 1024}k_r{r['score_rank']}"
        head[f"{key}_recall"] = round(r["mass_recall_vs_oracle"], 4)
        head[f"{key}_density"] = round(r["density"], 4)
        if r["needles_kept"] is not None:
            head[f"{key}_needles"] = r["needles_kept"]
    half = [r for r in rows if r["score_rank"] < r["head_dim"]]
    head["min_recall_half_rank"] = round(min(r["mass_recall_vs_oracle"] for r in half), 4)
    with_needles = [r["needles_kept"] for r in half if r["needles_kept"] is not None]
    if with_needles:
        head["min_needles_kept_half_rank"] = min(with_needles)
    path = write_results(
        "xattn_lowrank",
        rows=rows,
        headline=head,
        config={k_: str(v) if isinstance(v, Path) else v for k_, v in vars(args).items()},
        device="CPU (reference code, float32)",
        out_dir=args.out_dir,
    )
    print(path)


if __name__ == "__main__":
    main()
