"""Low-rank scoring for XAttention: score blocks on the keys' principal subspace.

Keys of a trained attention head are low-rank (Loki, Singhania et al. 2024: a fraction of the head
dimension holds most of the keys' variance). XAttention's scoring GEMM costs ``T^2 D / S`` per head,
so scoring on ``q P`` and ``k P``, with ``P`` the top-``r`` principal directions of the head's keys,
costs ``r / D`` of it (half at ``r = D / 2``) while ``q P (k P)^T`` keeps the logits' large terms.
The projection is computed from the input itself (a strided sample of its keys, a few steps of
subspace iteration on their ``D x D`` Gram matrix), so no calibration data is needed.

The softmax scale stays the full head dimension's: the projected logits estimate the full ones.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _orthonormalize(x: Tensor) -> Tensor:
    """Orthonormal columns spanning ``x`` `(..., D, r)` (Cholesky-QR twice; QR where it breaks down)."""
    for _ in range(2):
        x = x / x.norm(dim=-2, keepdim=True).clamp_min(1e-30)
        gram = x.mT @ x
        chol, info = torch.linalg.cholesky_ex(gram)
        if bool(info.any()):  # (near-)dependent columns: the slow, safe way
            return torch.linalg.qr(x).Q
        x = torch.linalg.solve_triangular(chol, x.mT, upper=False).mT  # x @ chol^-T
    return x


def key_subspace(k: Tensor, rank: int, *, max_samples: int = 4096, iters: int = 3) -> Tensor:
    """Top-``rank`` principal subspace of each key head's keys (uncentered: the Gram matrix ``K^T K``).

    Args:
        k: `(B, T, Hkv, D)` keys.
        rank: subspace dimension, ``0 < rank < D``.
        max_samples: the Gram matrix comes from at most this many keys, evenly strided.
        iters: subspace-iteration steps from a fixed pseudo-random start.

    Returns:
        `(B, Hkv, D, rank)` fp32 with orthonormal columns.
    """
    if k.dim() != 4:
        raise ValueError(f"key_subspace expects [B, T, H, D] keys, got {tuple(k.shape)}")
    b, _, h, d = k.shape
    if not 0 < rank < d:
        raise ValueError(f"score rank must be in (0, head dim {d}), got {rank}")
    if max_samples < 1 or iters < 1:
        raise ValueError(f"max_samples and iters must be >= 1, got {max_samples}, {iters}")
    ks = k[:, :: -(-k.shape[1] // max_samples)].float().transpose(1, 2)  # (B, H, <= max_samples, D)
    gram = ks.mT @ ks
    gram = gram / gram.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None].clamp_min(1e-30)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(d, rank, generator=g).to(k.device).expand(b, h, d, rank)
    for _ in range(iters):
        x = _orthonormalize(gram @ x)
    return x


def project_qk(q: Tensor, k: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """``(q P, k P)`` in the inputs' dtype, each query head through its key head's basis.

    Args:
        q: `(B, Tq, Hq, D)` queries.
        k: `(B, Tk, Hkv, D)` keys, ``Hq % Hkv == 0``.
        basis: `(B, Hkv, D, r)` from :func:`key_subspace`.

    Returns:
        `(B, Tq, Hq, r)` and `(B, Tk, Hkv, r)`, contiguous.
    """
    rep = q.shape[2] // k.shape[2]
    p = basis.to(q.dtype)
    qp = torch.einsum("bthd,bhdr->bthr", q, p.repeat_interleave(rep, dim=1)).contiguous()
    kp = torch.einsum("bthd,bhdr->bthr", k, p.to(k.dtype)).contiguous()
    return qp, kp
