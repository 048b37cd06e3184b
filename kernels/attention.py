"""The one attention entry point every model in the stack calls.

Layout is ``[B, T, H, D]`` (STYLE.md §5). Dense attention goes through PyTorch SDPA. With a
:class:`SparsePrefillConfig`, causal prefill at or above ``min_len`` tokens goes to the sparse
kernels instead (XAttention block selection, streaming heads, block-sparse Triton attention);
decode steps, short prompts and explicit masks stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

SPARSE_METHODS = ("dense", "xattention", "streaming")


@dataclass
class SparsePrefillConfig:
    """How long causal prefills are computed.

    Attributes:
        method: ``"dense"`` (always SDPA), ``"xattention"`` (antidiagonal block selection, plus
            streaming heads if any) or ``"streaming"`` (streaming heads, all other heads dense).
        min_len: prefills shorter than this stay dense.
        tau: XAttention's kept mass share per query-block row.
        row_share: XAttention also keeps a block where one strided query row puts at least this
            share of its mass (0 = the paper's rule alone). The default 0.1 adds nothing on diffuse
            attention and keeps diluted needles on peaked attention (CPU study at 8k/16k: error vs
            dense 5-7x lower for 1.3x the blocks; ``bench/results/xattn_selection.json``).
        dense_above: XAttention's dense fallback, in (0, 1]: a query-block row that keeps more than
            this share of its visible blocks keeps them all (1.0 = off). On diffuse attention the
            antidiagonal estimate ranks blocks poorly; 0.5 lifts recall on a learned layer 0 from
            0.914 to 0.986 at 0.89 density (CPU, 8k, stride 16; ``kernels/xattention/README.md``).
        stride: XAttention's antidiagonal stride (4, 8 or 16).
        block_size: sparse block size in tokens (64 or 128).
        streaming_heads: query heads that use sink + local windows, in every layer (from
            ``kernels.streaming_heads.profile_streaming_heads``).
        streaming_heads_per_layer: per-layer streaming heads (entry ``i`` for layer ``i``; LServe
            and DuoAttention pick them per layer). When set, it replaces ``streaming_heads`` for
            every layer and must cover each layer that reaches the sparse path
            (``kernels.streaming_heads.calibrate_sparse_prefill`` writes it).
        dense_layers: layers whose long prefills stay dense: diffuse layers, where XAttention keeps
            most blocks anyway and ranks them poorly (``calibrate_sparse_prefill`` picks them).
        sink: sink tokens of streaming heads.
        local: local window of streaming heads, in tokens.
        fp8_scoring: run XAttention's scoring GEMM in float8 e4m3 (Hopper; ~1.4-1.7x faster scoring).
        score_rank: XAttention scores on the keys' top principal directions of this rank (0 = the
            whole head dim; 64 of 128 halves the scoring GEMM; ``kernels/xattention/lowrank.py``).
        impl: ``"auto"``, ``"triton"`` or ``"reference"`` for the sparse kernels.
    """

    method: str = "dense"
    min_len: int = 8192
    tau: float = 0.9
    row_share: float = 0.1
    dense_above: float = 1.0
    stride: int = 8
    block_size: int = 128
    streaming_heads: list[int] = field(default_factory=list)
    streaming_heads_per_layer: list[list[int]] = field(default_factory=list)
    dense_layers: list[int] = field(default_factory=list)
    sink: int = 128
    local: int = 4096
    fp8_scoring: bool = False
    score_rank: int = 0
    impl: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in SPARSE_METHODS:
            raise ValueError(
                f"SparsePrefillConfig.method must be one of {SPARSE_METHODS}, got {self.method!r}"
            )
        if self.min_len < 1:
            raise ValueError(f"SparsePrefillConfig.min_len must be >= 1, got {self.min_len}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"SparsePrefillConfig.tau must be in (0, 1], got {self.tau}")
        if not 0.0 <= self.row_share <= 1.0:
            raise ValueError(f"SparsePrefillConfig.row_share must be in [0, 1], got {self.row_share}")
        if not 0.0 < self.dense_above <= 1.0:
            raise ValueError(
                f"SparsePrefillConfig.dense_above must be in (0, 1] (1.0 turns the dense fallback off), "
                f"got {self.dense_above}"
            )
        if self.stride not in (1, 2, 4, 8, 16) or self.block_size % self.stride:
            raise ValueError(
                f"SparsePrefillConfig.stride must be 1/2/4/8/16 and divide block_size, got {self.stride}"
            )
        if self.block_size not in (64, 128):
            raise ValueError(f"SparsePrefillConfig.block_size must be 64 or 128, got {self.block_size}")
        if self.sink < 0 or self.local < 1:
            raise ValueError(
                f"SparsePrefillConfig needs sink >= 0 and local >= 1, got {self.sink}, {self.local}"
            )
        if self.score_rank < 0:
            raise ValueError(f"SparsePrefillConfig.score_rank must be >= 0 (0 = off), got {self.score_rank}")
        if self.impl not in ("auto", "triton", "reference"):
            raise ValueError(f"SparsePrefillConfig.impl must be auto/triton/reference, got {self.impl!r}")
        if self.method == "streaming" and not (self.streaming_heads or any(self.streaming_heads_per_layer)):
            raise ValueError(
                "SparsePrefillConfig.method='streaming' needs streaming_heads or streaming_heads_per_layer "
                "(run the profiler)"
            )
        if any(i < 0 for i in self.dense_layers):
            raise ValueError(
                f"SparsePrefillConfig.dense_layers must be layer indices >= 0, got {self.dense_layers}"
            )

    def heads_for_layer(self, layer: int | None) -> list[int]:
        """The streaming heads of ``layer`` (``None``: a caller without layers, the shared list)."""
        if not self.streaming_heads_per_layer:
            return list(self.streaming_heads)
        if layer is None:
            raise ValueError(
                "SparsePrefillConfig.streaming_heads_per_layer needs the layer index: "
                "pass layer= to attention()"
            )
        if layer >= len(self.streaming_heads_per_layer):
            raise ValueError(
                f"SparsePrefillConfig.streaming_heads_per_layer covers {len(self.streaming_heads_per_layer)} "
                f"layers, attention was called for layer {layer}: profile every layer"
            )
        return list(self.streaming_heads_per_layer[layer])

    def head_type(self, n_heads: int, device: torch.device, layer: int | None = None) -> Tensor | None:
        """`(n_heads,)` int32 head-type vector of ``layer``, or None when no head streams."""
        heads = self.heads_for_layer(layer)
        if not heads:
            return None
        if max(heads) >= n_heads or min(heads) < 0:
            raise ValueError(f"streaming heads {heads} out of range for {n_heads} heads (layer {layer})")
        ht = torch.zeros(n_heads, dtype=torch.int32, device=device)
        ht[heads] = 1
        return ht


def _sparse_prefill(
    q: Tensor, k: Tensor, v: Tensor, cfg: SparsePrefillConfig, scale: float | None, layer: int | None
) -> Tensor:
    from kernels.block_sparse_attention.op import block_sparse_attn
    from kernels.xattention.op import xattention_prefill

    dev = q.device.type
    if torch.is_autocast_enabled(dev):  # as SDPA under autocast: q, k, v in the autocast dtype
        dt = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    head_type = cfg.head_type(q.shape[2], q.device, layer)
    if cfg.method == "xattention":
        return xattention_prefill(
            q,
            k,
            v,
            stride=cfg.stride,
            tau=cfg.tau,
            block_size=cfg.block_size,
            scale=scale,
            causal=True,
            head_type=head_type,
            sink=cfg.sink,
            local=cfg.local,
            fp8_scoring=cfg.fp8_scoring,
            impl=cfg.impl,
            row_share=cfg.row_share,
            dense_above=cfg.dense_above,
            score_rank=cfg.score_rank,
        )
    n_qb, n_kb = -(-q.shape[1] // cfg.block_size), -(-k.shape[1] // cfg.block_size)
    full = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=q.device).expand(
        q.shape[0], q.shape[2], n_qb, n_kb
    )
    return block_sparse_attn(
        q,
        k,
        v,
        full,
        block_size=cfg.block_size,
        scale=scale,
        causal=True,
        head_type=head_type,
        sink=cfg.sink,
        local=cfg.local,
        impl=cfg.impl,
    )


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    attn_mask: Tensor | None = None,
    scale: float | None = None,
    sparse: SparsePrefillConfig | None = None,
    layer: int | None = None,
) -> Tensor:
    """Scaled dot-product attention with GQA, in the stack's ``[B, T, H, D]`` layout.

    Args:
        q: `(B, Tq, Hq, D)` queries.
        k: `(B, Tk, Hkv, D)` keys; ``Hq`` must be a multiple of ``Hkv`` (grouped-query attention).
        v: `(B, Tk, Hkv, D)` values.
        causal: mask future keys (queries are aligned to the *end* of the keys, as in KV-cache
            decoding). Ignored when ``attn_mask`` is given.
        attn_mask: optional boolean `(B or 1, 1 or Hq, Tq, Tk)` mask, True = may attend.
        scale: softmax scale, default ``D ** -0.5``.
        sparse: optional sparse-prefill policy; used only for causal prefill (``Tq == Tk``) with no
            ``attn_mask`` and ``Tq >= sparse.min_len``.
        layer: the calling layer's index, for the policy's per-layer choices (``dense_layers``,
            ``streaming_heads_per_layer``).

    Returns:
        `(B, Tq, Hq, D)` output.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects [B, T, H, D] tensors, got q{tuple(q.shape)} k{tuple(k.shape)}")
    hq, hkv = q.shape[2], k.shape[2]
    if hq % hkv != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    tq, tk = q.shape[1], k.shape[1]
    if (
        sparse is not None
        and sparse.method != "dense"
        and causal
        and attn_mask is None
        and tq == tk
        and tq >= sparse.min_len
        and (layer is None or layer not in sparse.dense_layers)
        and (sparse.method != "streaming" or sparse.heads_for_layer(layer))  # no streaming head: SDPA
    ):
        return _sparse_prefill(q, k, v, sparse, scale, layer)
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    if hkv != hq:
        rep = hq // hkv
        kh = kh.repeat_interleave(rep, dim=1)
        vh = vh.repeat_interleave(rep, dim=1)
    is_causal = False
    if attn_mask is None and causal and tq > 1:
        if tq == tk:
            is_causal = True  # lets SDPA take its flash kernel
        else:  # queries sit at the end of the keys (chunked decode: tq < tk)
            attn_mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    return out.transpose(1, 2)  # (B, Tq, Hq, D)
