"""Streaming-head profiler (LServe / DuoAttention style): which heads can drop to sink + local windows.

A head can stream when, on calibration inputs, almost all of its attention mass already falls on
the first ``sink`` keys and the last ``local`` keys of each query. The profiler measures, per query
head, the mean mass outside that window (exact softmax, chunked over queries, fp32) and marks the
heads with the least outside mass as streaming.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.block_sparse_attention.reference import HEAD_MASKED, HEAD_STREAMING


@torch.no_grad()
def mass_outside_window(
    q: Tensor, k: Tensor, *, sink: int, local: int, scale: float | None = None, max_chunk_elems: int = 2**26
) -> Tensor:
    """Mean causal attention mass outside ``sink`` + ``local`` per query head.

    Only queries whose window does not already cover every earlier key (position ``>= sink + local``)
    are averaged; if there are none, all queries are.

    Args:
        q: `(B, T, Hq, D)` queries.
        k: `(B, T, Hkv, D)` keys of the same length (prefill), ``Hq % Hkv == 0``.
        sink: sink tokens.
        local: local window in tokens (the query's own position included).
        scale: softmax scale, default ``D ** -0.5``.
        max_chunk_elems: bound on one score chunk's size (queries × keys).

    Returns:
        `(Hq,)` fp32 mean outside mass in [0, 1].
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[1] != k.shape[1]:
        raise ValueError(
            f"expects [B, T, H, D] q and k of one length; got q{tuple(q.shape)} k{tuple(k.shape)}"
        )
    if sink < 0 or local < 1:
        raise ValueError(f"need sink >= 0 and local >= 1, got sink={sink}, local={local}")
    b, t, h_q, d = q.shape
    group = h_q // k.shape[2]
    scale = d**-0.5 if scale is None else scale
    first = sink + local if t > sink + local else 0
    chunk = max(1, min(t - first, max_chunk_elems // max(t, 1)))
    kpos = torch.arange(t, device=q.device)
    out = torch.zeros(h_q, dtype=torch.float64, device=q.device)
    for h in range(h_q):
        kh = k[:, :, h // group].float()  # (B, T, D)
        for s in range(first, t, chunk):
            qh = q[:, s : s + chunk, h].float()
            qpos = torch.arange(s, s + qh.shape[1], device=q.device)[:, None]
            logits = (qh @ kh.transpose(1, 2)) * scale
            logits = logits.masked_fill(kpos[None, :] > qpos, -math.inf)
            p = torch.softmax(logits, dim=-1)
            inside = (kpos[None, :] < sink) | (qpos - kpos[None, :] < local)
            out[h] += (p * (~inside)).sum().double()
    return (out / (b * (t - first))).float()


@dataclass(frozen=True)
class StreamingProfile:
    """Result of :func:`profile_streaming_heads`.

    Attributes:
        outside_mass: `(Hq,)` mean mass outside the window, averaged over calibration inputs.
        head_type: `(Hq,)` int32, ``HEAD_STREAMING`` for heads picked to stream, else ``HEAD_MASKED``.
        sink: sink tokens used. local: local window used.
    """

    outside_mass: Tensor
    head_type: Tensor
    sink: int
    local: int

    @property
    def streaming_heads(self) -> tuple[int, ...]:
        """Indices of the streaming heads."""
        return tuple(int(i) for i in torch.nonzero(self.head_type == HEAD_STREAMING).flatten())


def profile_streaming_heads(
    calibration: Iterable[tuple[Tensor, Tensor]],
    *,
    sink: int = 128,
    local: int = 4096,
    ratio: float = 0.5,
    max_outside: float = 0.05,
) -> StreamingProfile:
    """Pick streaming heads from calibration (q, k) pairs of one attention layer.

    A head streams if it is among the ``ratio`` share of heads with the least outside mass *and*
    its outside mass is at most ``max_outside`` (so a layer with no local heads keeps them all).

    Args:
        calibration: iterable of ``(q, k)`` in ``[B, T, H, D]`` captured from the layer.
        sink: sink tokens of the streaming window.
        local: local window in tokens.
        ratio: largest share of heads allowed to stream (LServe uses 0.5).
        max_outside: largest outside mass a streaming head may have.

    Returns:
        A :class:`StreamingProfile`.
    """
    if not 0.0 <= ratio <= 1.0 or not 0.0 <= max_outside <= 1.0:
        raise ValueError(f"ratio and max_outside must be in [0, 1], got {ratio}, {max_outside}")
    total, n = None, 0
    for q, k in calibration:
        m = mass_outside_window(q, k, sink=sink, local=local).cpu()
        total = m if total is None else total + m
        n += 1
    if total is None:
        raise ValueError("calibration is empty: pass at least one (q, k) pair")
    outside = total / n
    order = torch.argsort(outside)
    head_type = torch.full_like(outside, HEAD_MASKED, dtype=torch.int32)
    for h in order[: math.floor(ratio * outside.numel())]:
        if outside[h] <= max_outside:
            head_type[h] = HEAD_STREAMING
    return StreamingProfile(outside, head_type, sink, local)
