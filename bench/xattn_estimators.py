"""Block-mass estimators on captured attention: why XAttention's recall stays low on a learned layer.

XAttention estimates a block's attention mass from antidiagonal samples: each reshaped row/column cell
holds the *sum* of S logits (S query/key pairs on an antidiagonal), and the softmax runs over those
sums scaled by ``1/(sqrt(D) S)``, i.e. over the mean logit of the cell. A cell whose mass comes from a
single matching key is under-weighted: ``exp(mean)`` is far below ``mean(exp)`` (Jensen). The
"sampled" estimator here uses the same S pairs per cell but sums each pair's own ``exp``: the
plain Monte-Carlo estimate of the block's mass, the same GEMM FLOPs, S times the exponentials. The
"query_rows" estimator spends the same GEMM FLOPs on whole attention rows of every S-th query instead
(FlexPrefill/MInference-style query sampling): exact rows, fewer of them.

"cell_exact" is a bound, not an estimator: every cell's exact log-sum-exp over all its S x S
pairs, then XAttention's per-reshaped-row softmax; no cell estimate can rank blocks better under
that normalisation.

This compares them against the true block mass on queries and keys captured from a trained model
(``bench/prefill_attention.py --lm_only=1 --lm_dump_layers=0,3`` writes ``lm_l<L>_{qa,qb,k}.pt``):

- ``tau``: XAttention's threshold selection on the estimate; recall vs the oracle with the same
  number of blocks per query-block row, and the density it chose;
- ``equal_budget``: every estimator's top blocks with the per-row counts that antidiagonal S = 16
  picks at τ, so the ranking is compared at one density;
- ``dense_above``: the antidiagonal τ selection plus the dense fallback (a row keeping more than
  that share of its visible blocks keeps them all); its density and recall, rows with a
  ``dense_above`` key after the others.

    python -m bench.xattn_estimators --qk_dir=<folder with the dumps> [--layers=0,3] [--seq_len=8192]
        [--dense_above=1.0,0.7,0.6,0.5]

CPU, float32, reference code only (no kernel is timed). Results: ``bench/results/xattn_estimators.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from bench.prefill_attention import mass_recall
from kernels.block_sparse_attention.index import visible_blocks
from kernels.xattention.reference import antidiagonal_block_mass_ref, forced_blocks, select_blocks_ref


def _check_shapes(q: Tensor, k: Tensor, stride: int, block_size: int, name: str) -> None:
    t = q.shape[1]
    if t % block_size or block_size % stride:
        raise ValueError(
            f"T ({t}) must be a multiple of block_size ({block_size}), itself of stride ({stride})"
        )
    if k.shape[1] != t:
        raise ValueError(f"{name} is for self-attention (Tq == Tk)")


def sampled_pair_block_mass(q: Tensor, k: Tensor, *, stride: int, block_size: int) -> Tensor:
    """Block mass from the antidiagonal's pairs, each pair exponentiated on its own (causal, self-attention).

    Query ``iS + S-1-s`` meets key ``jS + s`` (the pairs XAttention sums), for s < S. Each reshaped row
    ``i`` gets one softmax over all its ``S x (T/S)`` sampled pairs; a block's mass is the sum of its
    cells' shares, so each valid reshaped row contributes 1, as in the antidiagonal estimate. At
    ``stride = 1`` it is the exact attention mass.

    Args:
        q: `(B, T, Hq, D)` queries; ``T`` a multiple of ``block_size``.
        k: `(B, T, Hkv, D)` keys, ``Hq % Hkv == 0``.
        stride: the antidiagonal stride ``S`` (``block_size % S == 0``).
        block_size: block size in tokens.

    Returns:
        `(B, Hq, T/block_size, T/block_size)` fp32.
    """
    b, t, h_q, d = q.shape
    _check_shapes(q, k, stride, block_size, "sampled_pair_block_mass")
    rep = h_q // k.shape[2]
    r, n = t // stride, t // block_size
    qf = q.float().transpose(1, 2)  # (B, H, T, D)
    kf = k.float().transpose(1, 2).repeat_interleave(rep, dim=1)
    offs = torch.arange(stride)
    rows = torch.arange(r)
    out = torch.empty(b, h_q, n, n)
    for h in range(h_q):
        logit = torch.stack(
            [
                qf[:, h, stride - 1 - s :: stride] @ kf[:, h, s::stride].transpose(-1, -2)
                for s in offs.tolist()
            ],
            1,
        ) * (d**-0.5)  # (B, S, R, R)
        q_pos = rows[:, None] * stride + (stride - 1 - offs)[:, None, None]  # (S, R, 1)
        k_pos = rows[None, :] * stride + offs[:, None, None]  # (S, 1, R)
        logit = logit.masked_fill(k_pos > q_pos, -math.inf)
        m = logit.amax(dim=(1, 3), keepdim=True)
        e = (logit - m).exp().sum(1)  # (B, R, R)
        p = e / e.sum(-1, keepdim=True)
        cells = block_size // stride
        out[:, h] = p.view(b, n, cells, n, cells).sum((2, 4))
    return out


def cell_exact_block_mass(q: Tensor, k: Tensor, *, stride: int, block_size: int) -> Tensor:
    """The best any cell estimate can do under XAttention's per-reshaped-row softmax (causal, self-attention).

    Each ``S x S`` cell gets the exact log-sum-exp of *all* its query/key logits (what a perfect
    estimator of the antidiagonal's cell would give), then the softmax runs per reshaped row over
    those cells and a block sums its cells, as in XAttention. What stays wrong is the pooling of a
    row's S queries before normalising: a query with a large partition function outweighs the
    others, where the true mass gives each query a share of 1. Exact at ``stride = 1``.

    Args:
        q: `(B, T, Hq, D)` queries; ``T`` a multiple of ``block_size``.
        k: `(B, T, Hkv, D)` keys, ``Hq % Hkv == 0``.
        stride: the cell side ``S`` (``block_size % S == 0``).
        block_size: block size in tokens.

    Returns:
        `(B, Hq, T/block_size, T/block_size)` fp32.
    """
    b, t, h_q, d = q.shape
    _check_shapes(q, k, stride, block_size, "cell_exact_block_mass")
    rep = h_q // k.shape[2]
    r, n, cells = t // stride, t // block_size, block_size // stride
    qf = q.float().transpose(1, 2)
    kf = k.float().transpose(1, 2).repeat_interleave(rep, dim=1)
    pos = torch.arange(t)
    hidden = pos[None, :] > pos[:, None]
    out = torch.empty(b, h_q, n, n)
    for h in range(h_q):
        logit = ((qf[:, h] @ kf[:, h].transpose(-1, -2)) * d**-0.5).masked_fill(hidden, -math.inf)
        cell = torch.logsumexp(logit.view(b, r, stride, r, stride), dim=(2, 4))  # (B, R, R)
        p = torch.softmax(cell, -1)
        out[:, h] = p.view(b, n, cells, n, cells).sum((2, 4))
    return out


def query_rows_block_mass(q: Tensor, k: Tensor, *, stride: int, block_size: int) -> Tensor:
    """Block mass from every ``stride``-th query's exact attention row (causal self-attention).

    Query ``iS + S-1`` (the last of each group of S, so the diagonal block is seen as far as it goes)
    gets its full softmax over the keys it can see; a block's estimate is the mean over its sampled
    queries of their mass in each key block. The same GEMM FLOPs as the antidiagonal at stride S
    (``T/S`` query rows against all ``T`` keys instead of ``T/S`` reshaped rows against ``T/S``
    reshaped columns of width ``S D``), S times its exponentials. Exact at ``stride = 1``.

    Args:
        q: `(B, T, Hq, D)` queries; ``T`` a multiple of ``block_size``.
        k: `(B, T, Hkv, D)` keys, ``Hq % Hkv == 0``.
        stride: keep one query in S (``block_size % S == 0``).
        block_size: block size in tokens.

    Returns:
        `(B, Hq, T/block_size, T/block_size)` fp32; each query block's row sums to 1.
    """
    b, t, h_q, d = q.shape
    _check_shapes(q, k, stride, block_size, "query_rows_block_mass")
    rep = h_q // k.shape[2]
    n = t // block_size
    qf = q.float().transpose(1, 2)
    kf = k.float().transpose(1, 2).repeat_interleave(rep, dim=1)
    q_pos = torch.arange(stride - 1, t, stride)
    hidden = torch.arange(t)[None, :] > q_pos[:, None]
    out = torch.empty(b, h_q, n, n)
    for h in range(h_q):
        logit = (qf[:, h, q_pos] @ kf[:, h].transpose(-1, -2)) * (d**-0.5)  # (B, T/S, T)
        p = logit.masked_fill(hidden, -math.inf).softmax(-1)
        out[:, h] = p.view(b, n, block_size // stride, n, block_size).sum(-1).mean(2)
    return out


def top_blocks(est: Tensor, counts: Tensor, forced: Tensor, vis: Tensor) -> Tensor:
    """Forced blocks first, then the largest estimates, ``counts`` blocks per row in all."""
    score = est.masked_fill(~vis, -1.0) + forced.float() * 1e9
    order = torch.argsort(score, -1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order))
    return ranks < counts


def study(
    q: Tensor,
    k: Tensor,
    *,
    strides: list[int],
    tau: float,
    block_size: int,
    dense_above: tuple[float, ...] = (),
) -> list[dict]:
    """Per-estimator rows, then the true-mass row, then the dense-fallback rows.

    Each (estimator, stride) row has the τ selection's density and recall and the equal-budget
    recall; then one antidiagonal row per stride and ``dense_above`` value (τ plus the fallback).
    """
    t = q.shape[1]
    vis = visible_blocks(t, t, block_size, True, "cpu")
    forced = forced_blocks(t, t, block_size, "cpu") & vis
    n_vis = vis.sum().item() * q.shape[2]
    true = antidiagonal_block_mass_ref(q, k, stride=1, block_size=block_size)
    oracle = select_blocks_ref(true, tau, t_q=t, t_k=t, block_size=block_size, causal=True)
    base = None
    rows, fallback = [], []
    for stride in strides:
        ests = {
            "antidiagonal": antidiagonal_block_mass_ref(q, k, stride=stride, block_size=block_size),
            "sampled": sampled_pair_block_mass(q, k, stride=stride, block_size=block_size),
            "query_rows": query_rows_block_mass(q, k, stride=stride, block_size=block_size),
            "cell_exact": cell_exact_block_mass(q, k, stride=stride, block_size=block_size),
        }
        for name, est in ests.items():
            keep = select_blocks_ref(est, tau, t_q=t, t_k=t, block_size=block_size, causal=True)
            if base is None and name == "antidiagonal" and stride == max(strides):
                base = keep.sum(-1, keepdim=True)
            rows.append(
                {
                    "estimator": name,
                    "stride": stride,
                    "tau_density": (keep & vis).sum().item() / n_vis,
                    "tau_recall_vs_oracle": mass_recall(true, keep),
                    "_est": est,
                }
            )
        for share in dense_above:
            keep = select_blocks_ref(
                ests["antidiagonal"], tau, t_q=t, t_k=t, block_size=block_size, causal=True, dense_above=share
            )
            fallback.append(
                {
                    "estimator": "antidiagonal",
                    "stride": stride,
                    "dense_above": share,
                    "tau_density": (keep & vis).sum().item() / n_vis,
                    "tau_recall_vs_oracle": mass_recall(true, keep),
                }
            )
    for row in rows:
        row["equal_budget_recall"] = mass_recall(true, top_blocks(row.pop("_est"), base, forced, vis))
    rows.append({"estimator": "true mass", "stride": 1, "tau_density": (oracle & vis).sum().item() / n_vis})
    return rows + fallback


def load_layer(qk_dir: Path, layer: int, seq_len: int) -> tuple[Tensor, Tensor]:
    files = [qk_dir / f"lm_l{layer}_{part}.pt" for part in ("qa", "qb", "k")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(
            f"missing {missing}: dump them with `python3 bench/prefill_attention.py --lm_only=1 "
            f"--lm_dump_layers={layer} --out_dir=<folder>` (a GPU run)"
        )
    qa, qb, k = (torch.load(f, weights_only=True) for f in files)
    q = torch.cat([qa, qb], 2)
    if seq_len > q.shape[1]:
        raise SystemExit(f"--seq_len={seq_len} is longer than the capture ({q.shape[1]} tokens)")
    return q[:, :seq_len].float(), k[:, :seq_len].float()


def main(argv: list[str] | None = None) -> None:
    from bench.common import write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qk_dir", type=Path, required=True)
    ap.add_argument("--layers", default="0,3")
    ap.add_argument("--seq_len", type=int, default=8192)
    ap.add_argument("--strides", default="16,8,4")
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--block_size", type=int, default=64)
    ap.add_argument("--dense_above", default="1.0,0.7,0.6,0.5", help="dense-fallback shares, in (0, 1]")
    ap.add_argument("--out_dir", type=Path, default=None)
    args = ap.parse_args(argv)
    strides = sorted((int(s) for s in args.strides.split(",")), reverse=True)
    shares = tuple(float(x) for x in args.dense_above.split(",") if x.strip())
    rows, head = [], {}
    for layer in (int(x) for x in args.layers.split(",")):
        t0 = time.time()
        q, k = load_layer(args.qk_dir, layer, args.seq_len)
        for r in study(q, k, strides=strides, tau=args.tau, block_size=args.block_size, dense_above=shares):
            rows.append({"layer": layer, "seq_len": args.seq_len, **r})
            if "dense_above" in r:
                key = f"l{layer}_{r['estimator']}_s{r['stride']}_dense_above{r['dense_above']}"
                head[f"{key}_recall"] = r["tau_recall_vs_oracle"]
                head[f"{key}_density"] = r["tau_density"]
            elif "equal_budget_recall" in r:
                head[f"l{layer}_{r['estimator']}_s{r['stride']}_equal_budget_recall"] = r[
                    "equal_budget_recall"
                ]
            print({"layer": layer, **{kk: round(v, 4) if isinstance(v, float) else v for kk, v in r.items()}})
        print(f"layer {layer}: {time.time() - t0:.0f} s", flush=True)
    path = write_results(
        "xattn_estimators",
        rows=rows,
        headline=head,
        config=vars(args) | {"qk_dir": str(args.qk_dir), "out_dir": str(args.out_dir)},
        device="CPU (reference code, float32)",
        out_dir=args.out_dir,
    )
    print(path)


if __name__ == "__main__":
    main()
