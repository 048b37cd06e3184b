"""Streaming-head profiler (LServe / DuoAttention style): which heads can drop to sink + local windows.

A head can stream when, on calibration inputs, almost all of its attention mass already falls on
the first ``sink`` keys and the last ``local`` keys of each query. The profiler measures, per query
head, the mean mass outside that window (exact softmax, chunked over queries, fp32) and marks the
heads with the least outside mass as streaming. :func:`calibrate_sparse_prefill` runs it on every
layer of a model and also sends diffuse layers (where XAttention keeps most blocks) to dense attention.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.attention import SparsePrefillConfig
from kernels.block_sparse_attention.index import visible_blocks
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


@dataclass(frozen=True)
class LayerPlan:
    """One layer's line of :func:`calibrate_sparse_prefill`'s report.

    Attributes:
        layer: layer index.
        streaming_heads: heads picked to stream (empty on a dense layer).
        outside_mass: per query head, mean mass outside sink + local on the calibration inputs.
        xattn_density: mean share of the visible blocks XAttention keeps on the other heads (None
            when the plan's method is not ``"xattention"``).
        dense: the layer's long prefills stay dense.
    """

    layer: int
    streaming_heads: tuple[int, ...]
    outside_mass: tuple[float, ...]
    xattn_density: float | None
    dense: bool


@torch.no_grad()
def calibrate_sparse_prefill(
    layers: Sequence[Sequence[tuple[Tensor, Tensor]]],
    base: SparsePrefillConfig,
    *,
    ratio: float = 0.5,
    max_outside: float = 0.05,
    dense_density: float = 0.5,
) -> tuple[SparsePrefillConfig, list[LayerPlan]]:
    """A per-layer sparse-prefill plan from calibration queries and keys of every layer.

    Each layer gets its own streaming heads (:func:`profile_streaming_heads` with ``ratio`` and
    ``max_outside``). With ``base.method == "xattention"``, XAttention then selects blocks on the
    layer's other heads with ``base``'s settings; a layer where it keeps more than ``dense_density``
    of the visible blocks on average goes to ``dense_layers``: such a layer saves little by being
    sparse, and there the antidiagonal estimate ranks blocks worst (``kernels/xattention/README.md``).

    Args:
        layers: per layer, a sequence of ``(q (B, T, Hq, D), k (B, T, Hkv, D))`` calibration pairs
            (``vla.backbones.decoder.Decoder.capture_qk`` gives one pair per layer and input).
        base: the settings to calibrate (method, stride, tau, sink, local, ...).
        ratio: largest share of a layer's heads allowed to stream.
        max_outside: largest outside-window mass a streaming head may have.
        dense_density: XAttention density above which a layer stays dense, in (0, 1].

    Returns:
        ``(config, report)``: ``base`` with ``streaming_heads_per_layer`` and ``dense_layers`` set
        (``streaming_heads`` cleared), and one :class:`LayerPlan` per layer.
    """
    from kernels.xattention.op import xattn_select

    if not 0.0 < dense_density <= 1.0:
        raise ValueError(f"dense_density must be in (0, 1], got {dense_density}")
    if not layers or any(len(pairs) == 0 for pairs in layers):
        raise ValueError("calibration needs at least one (q, k) pair for every layer")
    per_layer, dense, report = [], [], []
    for i, pairs in enumerate(layers):
        prof = profile_streaming_heads(
            pairs, sink=base.sink, local=base.local, ratio=ratio, max_outside=max_outside
        )
        streaming = prof.streaming_heads if base.method != "dense" else ()
        density = None
        if base.method == "xattention":
            scored = (prof.head_type != HEAD_STREAMING).nonzero().flatten()
            shares = []
            for q, k in pairs:
                if scored.numel() == 0:
                    break
                index, _ = xattn_select(
                    q,
                    k,
                    stride=base.stride,
                    tau=base.tau,
                    block_size=base.block_size,
                    causal=True,
                    impl=base.impl,
                    config={"fp8": 1} if base.fp8_scoring else None,
                    row_share=base.row_share,
                    dense_above=base.dense_above,
                    score_rank=base.score_rank,
                    heads=scored,
                )
                n_vis = visible_blocks(q.shape[1], k.shape[1], base.block_size, True, q.device).sum()
                kept = index.cnt[:, scored.to(q.device)].double().sum()
                shares.append((kept / (n_vis * q.shape[0] * scored.numel())).item())
            density = sum(shares) / len(shares) if shares else 0.0
        is_dense = density is not None and density > dense_density
        if is_dense:
            dense.append(i)
            streaming = ()
        per_layer.append(list(streaming))
        report.append(
            LayerPlan(i, tuple(streaming), tuple(float(x) for x in prof.outside_mass), density, is_dense)
        )
    cfg = dataclasses.replace(
        base, streaming_heads=[], streaming_heads_per_layer=per_layer, dense_layers=dense
    )
    return cfg, report
