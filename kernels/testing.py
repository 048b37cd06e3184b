"""Test helpers shared by the kernel tests and benchmarks: tolerances and structured attention inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# (relative RMS, max-abs relative to the reference's max magnitude) per dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-3, 1e-2),  # Triton's fp32 dot runs in tf32 on GPUs.
    torch.float16: (5e-3, 3e-2),
    torch.bfloat16: (1.6e-2, 8e-2),
}


def rel_rms(ref: Tensor, out: Tensor) -> float:
    """Return ``||out - ref|| / ||ref||`` in float64."""
    ref64, out64 = ref.double(), out.double()
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300)).item()


def assert_close(name: str, ref: Tensor, out: Tensor, dtype: torch.dtype) -> None:
    """Fail unless ``out`` matches ``ref`` within the tolerance for ``dtype`` (never warns).

    Checks shape, NaN/inf, relative RMS error and max-abs error (scaled by ``ref``'s max magnitude).
    """
    if ref.shape != out.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        raise AssertionError(f"{name}: output has {(~torch.isfinite(out)).sum().item()} non-finite values")
    rms_tol, abs_tol = TOLERANCES[dtype]
    err = rel_rms(ref, out)
    scale = ref.double().abs().max().clamp_min(1e-12).item()
    max_abs = (out.double() - ref.double()).abs().max().item() / scale
    if err > rms_tol or max_abs > abs_tol:
        raise AssertionError(
            f"{name}: rel-RMS {err:.3e} (tol {rms_tol:.1e}), max-abs/scale {max_abs:.3e} (tol {abs_tol:.1e}) "
            f"for {dtype}"
        )


@dataclass(frozen=True)
class Needle:
    """A planted retrieval: queries ``[q_start, q_end)`` of ``head`` attend to ``[k_start, k_end)``."""

    batch: int
    head: int
    q_start: int
    q_end: int
    k_start: int
    k_end: int


# structured_qkv logits of the benchmarks' "peaked" input: strong sinks, local windows and needles.
PEAKED = {"sink_logit": 12.0, "local_logit": 10.0, "needle_logit": 14.0}


def structured_qkv(
    batch: int,
    seq_len: int,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    sink_tokens: int = 4,
    sink_logit: float = 6.0,
    local_width: float = 48.0,
    local_logit: float = 5.0,
    needles_per_head: int = 1,
    needle_len: int = 32,
    needle_logit: float = 12.0,
    streaming_heads: tuple[int, ...] = (),
    noise: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, list[Needle]]:
    """Random ``[B, T, H, D]`` q/k/v with attention structure, not only noise.

    Every head gets attention sinks (the first ``sink_tokens`` keys) and a local window (a smooth
    positional code shared by q and k whose dot product decays with distance ~``local_width``).
    Heads not in ``streaming_heads`` also get needles: a span of ``needle_len`` queries late in the
    sequence that attends to a passage of ``needle_len`` keys far back (a shared random direction).
    Logit sizes are given in units of the softmax logit ``q.k / sqrt(D)``.

    Returns:
        ``(q, k, v, needles)``; needle heads are query heads (the key side is written into the
        query head's kv head, so with GQA a needle is visible to the whole group).
    """
    if seq_len < 4 * needle_len and needles_per_head > 0:
        raise ValueError(f"seq_len={seq_len} too short for needles of {needle_len} tokens")
    if q_heads % kv_heads:
        raise ValueError(f"q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    g = torch.Generator(device="cpu").manual_seed(seed)
    group = q_heads // kv_heads
    root = math.sqrt(
        math.sqrt(head_dim)
    )  # q.k / sqrt(D) = logit when |q_part| = |k_part| = root * sqrt(logit)
    gd = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, seq_len, q_heads, head_dim, generator=gd, device=device) * (noise / root)
    k = torch.randn(batch, seq_len, kv_heads, head_dim, generator=gd, device=device) * (noise / root)
    v = torch.randn(batch, seq_len, kv_heads, head_dim, generator=gd, device=device)
    pos = torch.arange(seq_len, dtype=torch.float64, device=device)
    # Random Fourier features of a Gaussian kernel of width ``local_width``: code(i)·code(j) ≈
    # exp(-(i-j)²/2w²) plus noise of std ~1/sqrt(2F) far away. (Evenly spaced frequencies beat
    # periodically: 8 of them recurred every ~3k tokens, making "local" heads attend far back.)
    n_freq = max(1, min(32, head_dim // 4))
    freqs = (torch.randn(n_freq, generator=g, dtype=torch.float64).abs() / local_width).to(device)
    code = torch.cat([torch.cos(pos[:, None] * freqs), torch.sin(pos[:, None] * freqs)], dim=1) / math.sqrt(
        n_freq
    )
    needles: list[Needle] = []
    for hk in range(kv_heads):
        basis, _ = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=g, dtype=torch.float64))
        basis = basis.to(device)
        local_dirs = basis[:, : 2 * n_freq].T  # (2F, D)
        sink_dir = basis[:, 2 * n_freq]
        loc = (code @ local_dirs).float() * root * math.sqrt(local_logit)
        k[:, :, hk] += loc
        k[:, :sink_tokens, hk] += sink_dir.float() * root * math.sqrt(sink_logit)
        for hq in range(hk * group, (hk + 1) * group):
            q[:, :, hq] += loc + sink_dir.float() * root * math.sqrt(sink_logit)
            if hq in streaming_heads:
                continue
            for b in range(batch):
                for n in range(needles_per_head):
                    direction = basis[:, 2 * n_freq + 1 + (n + hq) % (head_dim - 2 * n_freq - 1)].float()
                    lo = seq_len // 2 + int(torch.randint(0, seq_len // 2 - needle_len, (1,), generator=g))
                    ks = int(
                        torch.randint(
                            sink_tokens + needle_len,
                            max(sink_tokens + needle_len + 1, lo // 2),
                            (1,),
                            generator=g,
                        )
                    )
                    part = direction * root * math.sqrt(needle_logit)
                    q[b, lo : lo + needle_len, hq] += part
                    k[b, ks : ks + needle_len, hk] += part
                    needles.append(Needle(b, hq, lo, lo + needle_len, ks, ks + needle_len))
    return q.to(dtype), k.to(dtype), v.to(dtype), needles


def needle_blocks(needle: Needle, block_size: int, min_overlap: int = 16) -> tuple[list[int], list[int]]:
    """Query blocks and key blocks that hold at least ``min_overlap`` tokens of a needle's spans."""

    def blocks(lo: int, hi: int) -> list[int]:
        out = []
        for blk in range(lo // block_size, (hi - 1) // block_size + 1):
            if min(hi, (blk + 1) * block_size) - max(lo, blk * block_size) >= min(min_overlap, hi - lo):
                out.append(blk)
        return out

    return blocks(needle.q_start, needle.q_end), blocks(needle.k_start, needle.k_end)


def needles_kept(needles: list[Needle], block_mask: Tensor, block_size: int) -> float:
    """Share of needles whose key blocks are all kept for their query blocks in a `(B, H, NQB, NKB)` mask."""
    if not needles:
        raise ValueError("no needles to check")
    kept = 0
    for nd in needles:
        qbs, kbs = needle_blocks(nd, block_size)
        sub = block_mask[nd.batch, nd.head][qbs][:, kbs]
        kept += int(bool(sub.all()))
    return kept / len(needles)


def density_mask(h: int, n: int, density: float, gen: torch.Generator, device) -> torch.Tensor:
    """Random causal block mask keeping ``density`` of each row's causal blocks, diagonal always kept."""
    r = torch.rand(1, h, n, n, generator=gen, device=device)
    tri = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    r = torch.where(tri, r, -1.0)
    r.diagonal(dim1=-2, dim2=-1).fill_(2.0)
    count = torch.clamp(torch.round(density * torch.arange(1, n + 1, device=device)), min=1)
    rank = torch.argsort(torch.argsort(r, dim=-1, descending=True), dim=-1)
    return rank < count[:, None]
