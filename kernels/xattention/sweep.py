"""XAttention scoring sweep on one GPU: ``python -m kernels.xattention.sweep [--t=N] [--out=D] [--quick=1]``.

Times each piece of the scoring path separately at one length (B=1, 32 heads, head dim 128, causal,
block 128, S=16 and 8): the fp8 cast (fused kernel vs torch clamp + cast), the scoring kernel with
pointer loads vs TMA loads over a grid of launch configs, and the selection kernel; checks each TMA
variant's output against the pointer kernel's; and times the 10%-density block-sparse attention that
the scoring share is measured against. ``--quick=1``: S=16 fp8 TMA configs only (with the in-kernel q
cast) and cuBLAS on the same GEMM shape, the ceiling. Prints a table and writes ``xattn_sweep.json``.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import torch
import triton
import triton.testing

from kernels.block_sparse_attention.index import mask_to_index
from kernels.block_sparse_attention.triton_fwd import block_sparse_attn_fwd
from kernels.testing import density_mask, structured_qkv
from kernels.xattention.triton_fwd import to_fp8_e4m3, xattn_score_fwd, xattn_select_fwd

H, D, BS = 32, 128, 128


def _ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=5, rep=50, return_mode="median")


def gemm_ceiling(q8, k8, q, k, stride: int) -> list[dict]:
    """The scoring GEMM's shape on cuBLAS: per head ``[T/S, S·D] @ [S·D, T/S]``, full square, no epilogue.

    The causal scoring needs half of these FLOPs, so half the time is what a cuBLAS-class kernel
    would take for the GEMM alone (the fp8 rows write bf16 scores, as ``torch._scaled_mm`` must).
    """
    t = q.shape[1]
    n_rows = t // stride

    def per_head(x):
        return x[0].view(n_rows, stride, H, D).permute(2, 0, 1, 3).reshape(H, n_rows, stride * D).contiguous()

    a8, b8, a16, b16 = per_head(q8), per_head(k8), per_head(q), per_head(k)
    one = torch.ones((), device=q.device)
    flop = 2 * H * n_rows * n_rows * stride * D
    out = []

    def fp8():
        for h in range(H):
            torch._scaled_mm(a8[h], b8[h].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    def bf16():
        for h in range(0, H, 8):
            torch.bmm(a16[h : h + 8], b16[h : h + 8].transpose(1, 2))

    for name, fn in (("gemm_cublas_fp8_full", fp8), ("gemm_cublas_bf16_full", bf16)):
        try:
            ms = _ms(fn)
            out.append({"what": name, "ms": ms, "causal_half_ms": ms / 2, "tflops": flop / ms / 1e9})
        except Exception as e:  # no fp8 GEMM on this card
            out.append({"what": name, "error": str(e)[:200]})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str]) -> None:
    """Run the sweep; options ``--t=LEN --out=DIR``."""
    opts = dict(a.lstrip("-").split("=", 1) for a in argv)
    t = int(opts.get("t", 131072))
    out_dir = opts.get("out", os.environ.get("OUT", "."))
    name = torch.cuda.get_device_name()
    q, k, v, _ = structured_qkv(1, t, H, H, D, dtype=torch.bfloat16, device="cuda", seed=0, needle_len=64)
    rows: list[dict] = []
    scale = D**-0.5
    n = triton.cdiv(t, BS)
    gen = torch.Generator(device="cuda").manual_seed(0)
    idx10 = mask_to_index(density_mask(H, n, 0.1, gen, "cuda"), t, t, BS, causal=True)
    attn10 = _ms(
        functools.partial(block_sparse_attn_fwd, q, k, v, idx10, block_size=BS, scale=scale, causal=True)
    )
    rows.append({"what": "attn_10pct", "ms": attn10})
    rows.append(
        {
            "what": "fp8_cast_torch",
            "ms": _ms(
                lambda: (
                    q.clamp(-448, 448).to(torch.float8_e4m3fn),
                    k.clamp(-448, 448).to(torch.float8_e4m3fn),
                )
            ),
        }
    )
    rows.append({"what": "fp8_cast_fused", "ms": _ms(lambda: (to_fp8_e4m3(q), to_fp8_e4m3(k)))})
    q8, k8 = to_fp8_e4m3(q), to_fp8_e4m3(k)
    assert torch.equal(q8.float(), q.clamp(-448, 448).to(torch.float8_e4m3fn).float())
    configs = {  # (block_m, block_n, num_warps, num_stages, warp_specialize)
        False: [(128, 128, 8, 3, 0), (128, 256, 8, 2, 0), (256, 128, 8, 2, 0), (128, 256, 8, 2, 1)],
        True: [
            (128, 256, 8, 4, 0),
            (128, 256, 8, 3, 0),
            (128, 256, 8, 5, 0),
            (256, 256, 16, 3, 0),
            (256, 256, 16, 2, 0),
            (256, 128, 8, 4, 0),
            (128, 256, 8, 4, 1),
            (128, 128, 8, 4, 1),
            (256, 256, 8, 2, 0),
        ],
    }
    if opts.get("quick"):  # S = 16 fp8 TMA only: the default, in-kernel q cast, the GEMM ceiling
        configs = {
            True: [
                (128, 256, 8, 4, 0, 0),
                (128, 256, 8, 4, 1, 0),
                (128, 256, 8, 3, 0, 1),
                (128, 256, 8, 2, 0, 1),
                (128, 256, 8, 3, 1, 1),
                (128, 128, 8, 4, 0, 1),
                (128, 128, 8, 4, 1, 1),
            ]
        }
        rows.append({"what": "fp8_cast_k_only", "ms": _ms(lambda: to_fp8_e4m3(k))})
        rows += gemm_ceiling(q8, k8, q, k, 16)
    else:
        configs = {f: [(*c, 0) for c in cfgs] for f, cfgs in configs.items()}
    for stride in (16,) if opts.get("quick") else (16, 8):
        flop = t * t * D * H / stride
        for fp8, cfgs in configs.items():
            ref = None
            for bm, bn, nw, ns, ws, q_cvt in cfgs:
                qq, kk = (q if q_cvt else q8, k8) if fp8 else (q, k)
                for tma in (0, 1):
                    if (stride == 8 and (bm, bn, nw, ns, ws, q_cvt) not in cfgs[:2]) or (
                        (ws or q_cvt) and not tma
                    ):
                        continue
                    if opts.get("quick") and not tma:
                        continue
                    c = {
                        "block_m": bm,
                        "block_n": bn,
                        "num_warps": nw,
                        "num_stages": ns,
                        "tma": tma,
                        "ws": ws,
                    }
                    if q_cvt:  # the kernel casts each bf16 q tile; the call casts k
                        c.update(fp8=1, q_to_fp8=1)
                    row = {"what": "score", "stride": stride, "fp8": fp8, **c}
                    try:
                        fn = functools.partial(
                            xattn_score_fwd,
                            qq,
                            kk,
                            stride=stride,
                            block_size=BS,
                            scale=scale,
                            causal=True,
                            config=c,
                        )
                        lse_rb, lse_r = fn()
                        if ref is None:
                            ref = (lse_rb.clone(), lse_r.clone())
                        else:
                            fin = torch.isfinite(ref[1])
                            row["max_abs_diff_row_lse"] = (lse_r - ref[1])[fin].abs().max().item()
                        row["ms"] = _ms(fn)
                        row["tflops"] = flop / row["ms"] / 1e9
                    except Exception as e:  # over the card's resources
                        row["error"] = str(e)[:200]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            sel = functools.partial(
                xattn_select_fwd,
                *ref,
                batch=1,
                heads=H,
                t_q=t,
                t_k=t,
                stride=stride,
                block_size=BS,
                tau=0.9,
                causal=True,
            )
            rows.append({"what": "select", "stride": stride, "fp8": fp8, "ms": _ms(sel)})
            del ref, sel
            torch.cuda.empty_cache()
    print(f"\n{name}, T={t}: 10%-density attention {attn10:.2f} ms; target scoring <= {0.15 * attn10:.2f} ms")
    for r in rows:
        if r["what"] != "score" and "ms" in r:
            print(f"{r['what']:>16} S={r.get('stride', '-')} fp8={r.get('fp8', '-')}: {r['ms']:.2f} ms")
    for r in sorted((r for r in rows if "ms" in r and r["what"] == "score"), key=lambda r: r["ms"])[:12]:
        print(
            f"score S={r['stride']} fp8={int(r['fp8'])} q_to_fp8={r.get('q_to_fp8', 0)} "
            f"tma={r['tma']} ws={r['ws']} "
            f"bm={r['block_m']} bn={r['block_n']} "
            f"w={r['num_warps']} st={r['num_stages']}: {r['ms']:.2f} ms {r['tflops']:.0f} TFLOP/s "
            f"diff={r.get('max_abs_diff_row_lse', 0):.2e}"
        )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "xattn_sweep.json"), "w") as f:
        json.dump({"device": name, "seq_len": t, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
