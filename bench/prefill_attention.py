"""Sparse prefill attention benchmark on a CUDA card: block-sparse kernel, XAttention, streaming heads.

Writes ``bench/results/prefill_attention.json`` (or ``--out_dir``) through ``bench.common.write_results``.
Every figure is timed in the same process as dense SDPA (flash backend) on the same inputs.

Examples::

    python bench/prefill_attention.py
    python bench/prefill_attention.py --lengths=8192,32768 --sweep=1 --out_dir=/tmp/res
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import device_name, parse_flags, write_results
from kernels.block_sparse_attention.index import BlockIndex, index_to_mask, mask_to_index, visible_blocks
from kernels.block_sparse_attention.triton_fwd import block_sparse_attn_fwd
from kernels.testing import PEAKED, density_mask, needles_kept, rel_rms, structured_qkv
from kernels.xattention.lowrank import key_subspace, project_qk
from kernels.xattention.op import xattn_select
from kernels.xattention.triton_fwd import xattn_score_fwd

log = logging.getLogger("bench.prefill_attention")


@dataclasses.dataclass
class PrefillBenchConfig:
    """Benchmark settings (override with ``--field=value``)."""

    lengths: str = "8192,16384,32768,65536,131072"
    heads: int = 32
    head_dim: int = 128
    block_size: int = 128
    densities: str = "0.5,0.25,0.1,0.05"
    tau: float = 0.9
    row_share: float = 0.1  # > 0: fp8 variants also run with the row rule (kernels/xattention/README.md)
    # > 0: also the fp8 + row-rule variant scored on the keys' top principal directions of this rank
    score_rank: int = 0
    strides: str = "8,16"
    oracle_heads: int = 4
    sweep: int = 0  # 1: also time launch-config variants at the longest length
    out_dir: str = ""
    seed: int = 0
    lm: int = 0  # 1: train the policy backbone as a byte-level LM on Python sources, score its attention
    lm_only: int = 0  # 1: skip the synthetic lengths
    lm_train_seconds: float = 60.0
    lm_train_len: int = 8192
    lm_eval_len: int = 16384
    lm_tokens_per_step: int = 65536
    lm_dump_layers: str = ""  # e.g. "0,1": save those layers' captured q and k (bf16) to out_dir, for study
    # in (0, 1): the learned layers also run with the row rule and this dense fallback (S = 8 and 16)
    lm_dense_above: float = 0.0


def _parse(argv: list[str]) -> PrefillBenchConfig:
    return parse_flags(PrefillBenchConfig(), argv)


def timed(fn, reps: int, warmup: int = 1) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs, timed with CUDA events after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():  # CPU smoke runs only
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def xattn_key(row: dict) -> str:
    """``xattn_<input>_s<stride>[_fp8][_rs<row_share>][_r<score_rank>]``: one XAttention configuration."""
    rs = row.get("row_share") or 0.0
    rank = row.get("score_rank") or 0
    return (
        f"xattn_{row['input']}_s{row['stride']}{'_fp8' if row['fp8_scoring'] else ''}"
        f"{f'_rs{rs:g}' if rs else ''}{f'_r{rank}' if rank else ''}"
    )


def causal_density(index: BlockIndex, n: int) -> float:
    return index.cnt.double().sum().item() / (index.cnt.shape[0] * index.cnt.shape[1] * n * (n + 1) / 2)


def mass_recall(true_mass: torch.Tensor, keep: torch.Tensor) -> float:
    """Kept true mass over the best mass with the same number of blocks per row."""
    kept = (true_mass * keep).sum()
    srt = torch.sort(true_mass, dim=-1, descending=True).values.cumsum(-1)
    cnt = keep.sum(-1, keepdim=True).clamp_min(1)
    best = torch.gather(srt, -1, cnt - 1).sum()
    return (kept / best).item()


def run_length(t: int, cfg: PrefillBenchConfig, rows: list[dict], sweep: bool) -> dict:
    dev = torch.device("cuda")
    h, d, bs = cfg.heads, cfg.head_dim, cfg.block_size
    reps = 3 if t >= 65536 else 5 if t >= 32768 else 10
    q, k, v, needles = structured_qkv(
        1, t, h, h, d, dtype=torch.bfloat16, device=dev, seed=cfg.seed, needle_len=64, needles_per_head=2
    )
    n = -(-t // bs)
    scale = d**-0.5
    flops_causal = 4 * t * t * d * h / 2
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D) views, last dim contiguous

    def sdpa():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)

    dense_out = sdpa().transpose(1, 2)
    t_sdpa = timed(sdpa, reps)
    res = {"seq_len": t, "sdpa_flash_ms": t_sdpa, "sdpa_tflops": flops_causal / t_sdpa / 1e9}
    rows.append({"kind": "sdpa_flash", "seq_len": t, "ms": t_sdpa, "tflops": res["sdpa_tflops"]})

    full = mask_to_index(torch.ones(1, h, n, n, dtype=torch.bool, device=dev), t, t, bs, causal=True)

    def ours(index, config=None):
        return block_sparse_attn_fwd(q, k, v, index, block_size=bs, scale=scale, causal=True, config=config)

    out_full = ours(full)
    t_full = timed(lambda: ours(full), reps)
    res.update(
        full_mask_ms=t_full,
        full_mask_vs_sdpa=t_full / t_sdpa,
        full_mask_rel_err_vs_sdpa=rel_rms(dense_out.float(), out_full.float()),
    )
    rows.append(
        {
            "kind": "block_sparse_full_causal",
            "seq_len": t,
            "ms": t_full,
            "ratio_vs_sdpa": t_full / t_sdpa,
            "tflops": flops_causal / t_full / 1e9,
            "rel_err_vs_sdpa": res["full_mask_rel_err_vs_sdpa"],
        }
    )
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    for dens in [float(x) for x in cfg.densities.split(",")]:
        idx = mask_to_index(density_mask(h, n, dens, gen, dev), t, t, bs, causal=True)
        ms = timed(lambda idx=idx: ours(idx), reps)
        real = causal_density(idx, n)
        res[f"speedup_at_{round(dens * 100)}pct"] = t_sdpa / ms
        rows.append(
            {
                "kind": "block_sparse_fixed_density",
                "seq_len": t,
                "density_target": dens,
                "density_actual": real,
                "ms": ms,
                "speedup_vs_sdpa": t_sdpa / ms,
            }
        )
        if abs(dens - 0.1) < 1e-9:
            res["sparse_10pct_ms"] = ms
    inputs = {"diffuse": (q, k, v, needles, dense_out)}
    peaked = structured_qkv(
        1,
        t,
        h,
        h,
        d,
        dtype=torch.bfloat16,
        device=dev,
        seed=cfg.seed + 1,
        needle_len=64,
        needles_per_head=2,
        **PEAKED,
    )
    qp, kp, vp = (x.transpose(1, 2) for x in peaked[:3])
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        inputs["peaked"] = (
            *peaked,
            F.scaled_dot_product_attention(qp, kp, vp, is_causal=True).transpose(1, 2),
        )
    del qp, kp, vp
    for name, inp in inputs.items():
        xattn_rows(name, inp, t, cfg, rows, res, reps, t_sdpa, sweep)
    return res


def xattn_rows(name, inp, t, cfg, rows, res, reps, t_sdpa, sweep) -> None:
    """XAttention on one input: scoring cost, chosen density, error vs dense, needles, recall vs oracle."""
    q, k, v, needles, dense_out = inp
    dev, h, d, bs = q.device, cfg.heads, cfg.head_dim, cfg.block_size
    n = -(-t // bs)
    scale = d**-0.5

    def ours(index, head_type=None):
        return block_sparse_attn_fwd(
            q, k, v, index, block_size=bs, scale=scale, causal=True, head_type=head_type, sink=128, local=4096
        )

    oh = min(cfg.oracle_heads, h)
    _, true_mass = xattn_select(
        q[:, :, :oh],
        k[:, :, :oh],
        stride=1,
        tau=1.0,
        block_size=bs,
        causal=True,
        return_mass=True,
        impl="triton",
    )
    vis = visible_blocks(t, t, bs, True, dev)
    variants = [(fp8, 0.0, 0) for fp8 in (False, True)]
    if cfg.row_share > 0:
        variants.append((True, cfg.row_share, 0))
    if cfg.score_rank > 0:
        variants.append((True, cfg.row_share, cfg.score_rank))
    for stride in [int(s) for s in cfg.strides.split(",")]:
        for fp8, rs, rank in variants:
            sc = {"fp8": 1} if fp8 else {}

            def select(sc=sc, stride=stride, rs=rs, rank=rank, heads=None):
                return xattn_select(
                    q,
                    k,
                    stride=stride,
                    tau=cfg.tau,
                    block_size=bs,
                    causal=True,
                    impl="triton",
                    config=sc,
                    row_share=rs,
                    score_rank=rank,
                    heads=heads,
                )

            def score_only(sc=sc, stride=stride, rank=rank):  # the projection counts as scoring
                qs, ks = project_qk(q, k, key_subspace(k, rank)) if rank else (q, k)
                return xattn_score_fwd(
                    qs, ks, stride=stride, block_size=bs, scale=scale, causal=True, config=sc
                )

            try:
                index, _ = select()
            except Exception as e:  # a variant over the card's resources
                rows.append(
                    {
                        "kind": "xattn",
                        "input": name,
                        "seq_len": t,
                        "stride": stride,
                        "fp8_scoring": fp8,
                        "row_share": rs,
                        "score_rank": rank,
                        "error": str(e)[:300],
                    }
                )
                log.info("xattn %s stride %d fp8 %s failed: %s", name, stride, fp8, str(e)[:300])
                continue
            t_score = timed(select, reps)
            t_score_kernel = timed(score_only, reps)
            out = ours(index)
            t_attn = timed(lambda index=index: ours(index), reps)
            t_e2e = timed(lambda: ours(select()[0]), reps)
            keep = index_to_mask(index, n) & vis
            row = {
                "kind": "xattn",
                "input": name,
                "seq_len": t,
                "stride": stride,
                "fp8_scoring": fp8,
                "tau": cfg.tau,
                "row_share": rs,
                "score_rank": rank,
                "density": causal_density(index, n),
                "scoring_ms": t_score,
                "scoring_kernel_ms": t_score_kernel,
                "select_kernel_ms_approx": t_score - t_score_kernel,
                "attn_ms": t_attn,
                "e2e_ms": t_e2e,
                "e2e_speedup_vs_sdpa": t_sdpa / t_e2e,
                "scoring_share_of_10pct_attn": t_score / res["sparse_10pct_ms"],
                "rel_err_vs_dense": rel_rms(dense_out.float(), out.float()),
                "needles_kept": needles_kept(needles, keep.cpu(), bs),
                "mass_recall_vs_oracle": mass_recall(true_mass[:, :oh], keep[:, :oh]),
                "kept_true_mass_share": ((true_mass * keep[:, :oh]).sum() / true_mass.sum()).item(),
            }
            if stride == 16 and fp8:  # half the heads streaming (LServe), the rest XAttention, one launch
                ht = (torch.arange(h, device=dev) % 2).to(torch.int32)
                row["half_streaming_attn_ms"] = timed(lambda index=index, ht=ht: ours(index, ht), reps)
                row["half_streaming_rel_err_vs_dense"] = rel_rms(dense_out.float(), ours(index, ht).float())
                # end to end, only the XAttention heads scored (streaming heads ignore the index)
                scored = (ht == 0).nonzero().flatten()
                row["half_streaming_scoring_ms"] = timed(lambda scored=scored: select(heads=scored), reps)
                row["half_streaming_e2e_ms"] = timed(
                    lambda scored=scored, ht=ht: ours(select(heads=scored)[0], ht), reps
                )
                row["half_streaming_e2e_speedup_vs_sdpa"] = t_sdpa / row["half_streaming_e2e_ms"]
            rows.append(row)
            res[xattn_key(row)] = row
            log.info("T=%d %s", t, json.dumps(row))
    if sweep and name == "diffuse":
        for fp8 in (False, True):
            for bm, bn, nw, ns in (
                (128, 128, 8, 3),
                (128, 256, 8, 3),
                (128, 256, 8, 2),
                (64, 256, 4, 3),
                (256, 128, 8, 2),
            ):
                c = {"block_m": bm, "block_n": bn, "num_warps": nw, "num_stages": ns, "fp8": int(fp8)}
                try:
                    ms = timed(
                        lambda c=c: xattn_score_fwd(
                            q, k, stride=16, block_size=bs, scale=scale, causal=True, config=c
                        ),
                        3,
                    )
                except Exception as e:
                    rows.append(
                        {"kind": "sweep_scoring", "seq_len": t, "stride": 16, **c, "error": str(e)[:200]}
                    )
                    continue
                rows.append({"kind": "sweep_scoring", "seq_len": t, "stride": 16, **c, "ms": ms})
                log.info("scoring sweep %s: %.2f ms", c, ms)


def python_corpus(max_bytes: int = 48 << 20) -> torch.Tensor:
    """Bytes of the Python sources installed on this machine (stdlib and site-packages), uint8."""
    import sysconfig

    chunks, total = [], 0
    for root in dict.fromkeys([sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]):
        for path in sorted(Path(root).rglob("*.py")):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            chunks.append(data)
            total += len(data)
            if total >= max_bytes:
                break
        if total >= max_bytes:
            break
    if total < 1 << 20:
        raise SystemExit(f"found only {total} bytes of Python source; need at least 1 MiB")
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)


def lm_rows(cfg: PrefillBenchConfig, rows: list[dict]) -> dict:
    """Train the policy backbone (vla.backbones.decoder) as a byte LM, then score its learned attention."""
    from kernels.streaming_heads import mass_outside_window
    from vla.backbones import decoder as dec

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    act = torch.bfloat16 if dev.type == "cuda" else torch.float32  # the Triton interpreter lacks bf16 dots
    torch.manual_seed(cfg.seed)
    corpus = python_corpus().to(dev)
    hold = corpus[-(4 << 20) :]
    train = corpus[: -(4 << 20)]
    mcfg = dec.DecoderConfig(
        hidden_size=512,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=1376,
        rope_theta=500000.0,
        vocab_size=256,
        tie_word_embeddings=True,
    )
    model = dec.Decoder(mcfg).to(dev)
    dec.init_weights(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    t_len, batch = cfg.lm_train_len, max(1, cfg.lm_tokens_per_step // cfg.lm_train_len)

    def sample(src: torch.Tensor, n: int, length: int) -> torch.Tensor:
        starts = torch.randint(0, src.numel() - length - 1, (n,), device=dev)
        return src[starts[:, None] + torch.arange(length + 1, device=dev)].long()

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model.logits(x[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, 256), x[:, 1:].reshape(-1))

    with torch.no_grad():
        loss0 = loss_of(sample(hold, 2, t_len)).item()
    start, step = time.time(), 0
    while time.time() - start < cfg.lm_train_seconds:
        lr = 2e-3 * min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_of(sample(train, batch, t_len))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    with torch.no_grad():
        loss1 = loss_of(sample(hold, 2, t_len)).item()
    rows.append(
        {
            "kind": "lm_train",
            "steps": step,
            "seconds": time.time() - start,
            "train_len": t_len,
            "batch": batch,
            "heldout_bits_per_byte_before": loss0 / math.log(2),
            "heldout_bits_per_byte_after": loss1 / math.log(2),
            "params": sum(p.numel() for p in model.parameters()),
        }
    )
    log.info("LM: %d steps, held-out bits/byte %.3f -> %.3f", step, loss0 / math.log(2), loss1 / math.log(2))
    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real_attention = dec.attention

    def recording(q, k, v, **kw):
        captured.append((q.detach(), k.detach(), v.detach()))
        return real_attention(q, k, v, **kw)

    x = sample(hold, 1, cfg.lm_eval_len)[:, :-1]
    dec.attention = recording
    try:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            model.logits(x)
    finally:
        dec.attention = real_attention
    if cfg.lm_dump_layers:
        dump_dir = Path(cfg.out_dir or ".")
        for layer in (int(x) for x in cfg.lm_dump_layers.split(",")):
            q, k, _ = captured[layer]
            half = q.shape[2] // 2  # [B, T, H, D]: two files of q keep each under $OUT's 16 MiB
            for name, z in (("qa", q[:, :, :half]), ("qb", q[:, :, half:]), ("k", k)):
                torch.save(z.to(torch.bfloat16).cpu().contiguous(), dump_dir / f"lm_l{layer}_{name}.pt")
    bs, t = 64, cfg.lm_eval_len
    n = -(-t // bs)
    vis = visible_blocks(t, t, bs, True, dev)
    for layer, (q, k, v) in enumerate(captured):
        q, k, v = (z.to(act).contiguous() for z in (q, k, v))
        _, true_mass = xattn_select(q, k, stride=1, tau=1.0, block_size=bs, return_mass=True, impl="triton")
        dense = real_attention(q, k, v, causal=True)
        t_sdpa = timed(lambda q=q, k=k, v=v: real_attention(q, k, v, causal=True), 10)
        outside = mass_outside_window(q, k, sink=64, local=1024)
        shares = (0.0, cfg.row_share) if cfg.row_share > 0 else (0.0,)
        variants = [(st, rs, 1.0) for st in (4, 8, 16) for rs in shares]
        if 0.0 < cfg.lm_dense_above < 1.0:  # diffuse rows go dense (kernels/xattention/README.md)
            variants += [(st, cfg.row_share, cfg.lm_dense_above) for st in (4, 8, 16)]
        for stride, rs, da in variants:

            def select(q=q, k=k, stride=stride, rs=rs, da=da):
                return xattn_select(
                    q,
                    k,
                    stride=stride,
                    tau=cfg.tau,
                    block_size=bs,
                    impl="triton",
                    row_share=rs,
                    dense_above=da,
                )[0]

            def e2e(q=q, k=k, v=v, select=select):
                return block_sparse_attn_fwd(
                    q, k, v, select(), block_size=bs, scale=q.shape[-1] ** -0.5, causal=True
                )

            index = select()
            keep = index_to_mask(index, n) & vis
            row = {
                "kind": "lm_xattn",
                "layer": layer,
                "seq_len": t,
                "block_size": bs,
                "stride": stride,
                "tau": cfg.tau,
                "row_share": rs,
                "dense_above": da,
                "density": causal_density(index, n),
                "mass_recall_vs_oracle": mass_recall(true_mass, keep),
                "kept_true_mass_share": ((true_mass * keep).sum() / true_mass.sum()).item(),
                "rel_err_vs_dense": rel_rms(dense.float(), e2e().float()),
                "e2e_ms": timed(e2e, 10),
                "sdpa_ms": t_sdpa,
                "head_outside_mass_sink64_local1024": [round(float(o), 4) for o in outside],
            }
            rows.append(row)
            log.info("LM %s", json.dumps(row))
    x_eval = sample(
        hold, 1, cfg.lm_eval_len
    )  # a second held-out stretch: calibrate on one, judge on the other
    rows.append(lm_plan_row(model, [(q, k) for q, k, _ in captured], x_eval, bs, act))
    log.info("LM plan %s", json.dumps(rows[-1]))
    return lm_headline(rows)


def lm_plan_row(model, calibration: list, x_eval: torch.Tensor, block_size: int, act: torch.dtype) -> dict:
    """Calibrate a per-layer sparse-prefill plan on one input, then judge it on another, whole model.

    ``calibrate_sparse_prefill`` (streaming heads per layer: outside-window mass at most 5 %, half the
    heads at most; XAttention S = 8, τ 0.9, row rule 0.1; a layer whose XAttention density is over
    0.5 stays dense). Held-out bits/byte and the model's prefill time, dense against the plan and
    against XAttention on every layer with no plan.
    """
    from kernels.attention import SparsePrefillConfig
    from kernels.streaming_heads import calibrate_sparse_prefill

    dev = x_eval.device
    t = x_eval.shape[1] - 1
    base = SparsePrefillConfig(
        method="xattention",
        min_len=t,
        tau=0.9,
        row_share=0.1,
        stride=8,
        block_size=block_size,
        sink=64,
        local=1024,
        impl="triton",
    )
    plan, report = calibrate_sparse_prefill(
        [[(q.to(act), k.to(act))] for q, k in calibration],
        base,
        ratio=0.5,
        max_outside=0.05,
        dense_density=0.5,
    )
    x = x_eval[:, :-1]

    @torch.no_grad()
    def bits(sparse: SparsePrefillConfig) -> tuple[float, float]:
        model.set_sparse_prefill(sparse)

        def run():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                return model.logits(x)

        logits = run()
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x_eval[:, 1:].reshape(-1))
        return loss.item() / math.log(2), timed(run, 5)

    try:
        dense_bpb, dense_ms = bits(SparsePrefillConfig())
        plan_bpb, plan_ms = bits(plan)
        all_bpb, all_ms = bits(base)
    finally:
        model.set_sparse_prefill(SparsePrefillConfig())
    return {
        "kind": "lm_plan",
        "seq_len": t,
        "dense_layers": plan.dense_layers,
        "streaming_heads_per_layer": plan.streaming_heads_per_layer,
        "xattn_density_per_layer": [r.xattn_density for r in report],
        "outside_mass_per_layer": [list(r.outside_mass) for r in report],
        "bits_per_byte_dense": dense_bpb,
        "bits_per_byte_plan": plan_bpb,
        "bits_per_byte_all_xattn": all_bpb,
        "prefill_ms_dense": dense_ms,
        "prefill_ms_plan": plan_ms,
        "prefill_ms_all_xattn": all_ms,
    }


def lm_headline(rows: list[dict]) -> dict:
    """Headline keys of the learned-attention rows (``lm_rows``).

    XAttention's rule alone (S = 4, 8, 16), with the row rule, and with the dense fallback; the
    fallback's keys sit beside the others, never in their place.
    """
    res: dict = {}
    lm_all = [r for r in rows if r["kind"] == "lm_xattn"]
    fallback = [r for r in lm_all if r.get("dense_above", 1.0) < 1.0]
    lm_all = [r for r in lm_all if r.get("dense_above", 1.0) >= 1.0]
    lm = [r for r in lm_all if not r.get("row_share")]  # headline keys: XAttention's rule alone
    with_rows = [r for r in lm_all if r.get("row_share")]
    for stride in sorted({r["stride"] for r in fallback}):  # beside the headline, never in place of it
        of_s = [r for r in fallback if r["stride"] == stride]
        res[f"lm_xattn_mass_recall_vs_oracle_dense_above_s{stride}"] = min(
            r["mass_recall_vs_oracle"] for r in of_s
        )
        res[f"lm_xattn_density_per_layer_dense_above_s{stride}"] = [
            round(r["density"], 4) for r in sorted(of_s, key=lambda r: r["layer"])
        ]
        res[f"lm_xattn_e2e_vs_sdpa_per_layer_dense_above_s{stride}"] = [
            round(r["e2e_ms"] / r["sdpa_ms"], 3) for r in sorted(of_s, key=lambda r: r["layer"])
        ]
    if with_rows:
        res["lm_xattn_mass_recall_vs_oracle_row_share"] = min(r["mass_recall_vs_oracle"] for r in with_rows)
        res["lm_xattn_density_mean_row_share"] = statistics.mean(r["density"] for r in with_rows)
    res["lm_xattn_mass_recall_vs_oracle"] = min(r["mass_recall_vs_oracle"] for r in lm)
    for stride in sorted({r["stride"] for r in lm}):
        of_s = [r for r in lm if r["stride"] == stride]
        res[f"lm_xattn_mass_recall_vs_oracle_s{stride}"] = min(r["mass_recall_vs_oracle"] for r in of_s)
        res[f"lm_xattn_mass_recall_vs_oracle_s{stride}_worst_layer"] = min(
            of_s, key=lambda r: r["mass_recall_vs_oracle"]
        )["layer"]
    res["lm_xattn_mass_recall_vs_oracle_mean"] = statistics.mean(r["mass_recall_vs_oracle"] for r in lm)
    res["lm_xattn_density_mean"] = statistics.mean(r["density"] for r in lm)
    res["lm_xattn_rel_err_vs_dense_max"] = max(r["rel_err_vs_dense"] for r in lm)
    for r in (r for r in rows if r["kind"] == "lm_plan"):  # the calibrated whole-model plan
        res["lm_plan_dense_layers"] = r["dense_layers"]
        res["lm_plan_streaming_heads_per_layer"] = r["streaming_heads_per_layer"]
        res["lm_plan_bits_per_byte_vs_dense"] = r["bits_per_byte_plan"] - r["bits_per_byte_dense"]
        res["lm_all_xattn_bits_per_byte_vs_dense"] = r["bits_per_byte_all_xattn"] - r["bits_per_byte_dense"]
        res["lm_plan_prefill_speedup_vs_dense"] = r["prefill_ms_dense"] / r["prefill_ms_plan"]
        res["lm_all_xattn_prefill_speedup_vs_dense"] = r["prefill_ms_dense"] / r["prefill_ms_all_xattn"]
    return res


def official_headline(path: Path | None = None) -> dict:
    """``vs_official_xattn_128k`` from ``bench/vs_official_xattn.py``'s result, with its source.

    That is a separate device run (the official code is built there, ``bench/official_xattn/``); None
    where it was not run.
    """
    from bench.common import RESULTS_DIR

    path = path or Path(RESULTS_DIR) / "vs_official_xattn.json"
    if not path.is_file():
        return {"vs_official_xattn_128k": None}
    head = json.loads(path.read_text())["headline"]
    return {
        "vs_official_xattn_128k": head.get("vs_official_xattn_128k"),
        "vs_official_xattn_128k_official_variant": head.get("vs_official_xattn_128k_official_variant"),
        "vs_official_xattn_128k_card": head.get("card"),
        "vs_official_xattn_source": "bench/results/vs_official_xattn.json",
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = _parse(sys.argv[1:])
    torch.backends.cuda.matmul.allow_tf32 = True
    if cfg.lm_only:  # the learned-attention part alone, written to prefill_attention_lm.json
        rows: list[dict] = []
        res = lm_rows(cfg, rows)
        path = write_results(
            "prefill_attention_lm",
            rows=rows,
            headline=res,
            config=dataclasses.asdict(cfg),
            device=device_name(),
            out_dir=Path(cfg.out_dir) if cfg.out_dir else None,
        )
        log.info("wrote %s\n%s", path, json.dumps(res, indent=1))
        return
    if not torch.cuda.is_available():
        raise SystemExit("prefill_attention needs a CUDA device")
    lengths = [int(x) for x in cfg.lengths.split(",")]
    rows: list[dict] = []
    per_len = {}
    start = time.time()
    for t in lengths:
        per_len[t] = run_length(t, cfg, rows, bool(cfg.sweep) and t == max(lengths))
        torch.cuda.empty_cache()
        log.info(
            "T=%d done at %.0fs: %s",
            t,
            time.time() - start,
            {k: v for k, v in per_len[t].items() if not isinstance(v, dict)},
        )
    top = per_len[max(lengths)]
    xrows = [r for r in rows if r["kind"] == "xattn" and "error" not in r]

    def of(key: str) -> list[dict]:
        return [r for r in xrows if xattn_key(r) == key]

    def pick(name: str) -> str | None:
        keys = [key for key in top if key.startswith(f"xattn_{name}_")]
        good = [key for key in keys if min(r["needles_kept"] for r in of(key)) == 1.0] or keys
        return min(good, key=lambda key: top[key]["e2e_ms"], default=None)

    headline = {
        "seq_len": max(lengths),
        "full_mask_vs_sdpa_128k": top["full_mask_vs_sdpa"],
        "speedup_at_10pct_128k": top.get("speedup_at_10pct"),
        **official_headline(),
    }
    for name in ("diffuse", "peaked"):
        best = pick(name)
        if best is None:
            continue
        headline[f"{name}_xattn_config"] = best
        headline[f"{name}_xattn_scoring_share_128k"] = top[best]["scoring_share_of_10pct_attn"]
        headline[f"{name}_xattn_mass_recall_vs_oracle"] = min(r["mass_recall_vs_oracle"] for r in of(best))
        headline[f"{name}_needles_kept"] = min(r["needles_kept"] for r in of(best))
        headline[f"{name}_xattn_density_128k"] = top[best]["density"]
        headline[f"{name}_xattn_rel_err_vs_dense_128k"] = top[best]["rel_err_vs_dense"]
        headline[f"{name}_xattn_e2e_speedup_128k"] = top[best]["e2e_speedup_vs_sdpa"]
    recalls = [r["mass_recall_vs_oracle"] for r in xrows]
    # the share of a configuration that keeps every needle at every length (a cheaper scoring that
    # loses needles, e.g. a low score_rank, does not count); the cheapest of any configuration beside it
    shares = {key: top[key]["scoring_share_of_10pct_attn"] for key in top if key.startswith("xattn_")}
    whole = [key for key in shares if min(r["needles_kept"] for r in of(key)) == 1.0]
    headline["xattn_scoring_share_128k"] = min((shares[k] for k in whole), default=None)
    headline["xattn_scoring_share_128k_any_config"] = min(shares.values(), default=None)
    headline["xattn_mass_recall_vs_oracle"] = min(recalls) if recalls else None
    # needles_kept: the configurations the headline picked (with the row rule where it ran);
    # needles_kept_tau_only: every configuration without it (XAttention's rule alone).
    picked = [headline[k] for k in ("diffuse_needles_kept", "peaked_needles_kept") if k in headline]
    headline["needles_kept"] = min(picked) if picked else None
    tau_only = [r for r in xrows if not r.get("row_share")]
    headline["needles_kept_tau_only"] = min(r["needles_kept"] for r in tau_only) if tau_only else None
    path = write_results(
        "prefill_attention",
        rows=rows,
        headline=headline,
        config=dataclasses.asdict(cfg),
        device=device_name(),
        out_dir=Path(cfg.out_dir) if cfg.out_dir else None,
    )
    log.info("wrote %s\n%s", path, json.dumps(headline, indent=1))
    if not math.isfinite(top["full_mask_rel_err_vs_sdpa"]) or top["full_mask_rel_err_vs_sdpa"] > 2e-2:
        raise SystemExit(f"full-mask output disagrees with SDPA: rel err {top['full_mask_rel_err_vs_sdpa']}")


if __name__ == "__main__":
    main()
