"""Block selections as masks or compacted per-row index lists (what the Triton kernel walks)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class BlockIndex(NamedTuple):
    """Kept key blocks per query-block row, ascending.

    Attributes:
        idx: `(B, H, NQB, MAXC)` int32 key-block ids; entries past ``cnt`` are ignored.
        cnt: `(B, H, NQB)` int32 number of kept blocks (contiguous).
        n_full: `(B, H, NQB)` int32 leading entries that every query of the row sees entirely, so
            the kernel needs no element mask for them (contiguous, same layout as ``cnt``).
    """

    idx: Tensor
    cnt: Tensor
    n_full: Tensor


def full_block_count(t_q: int, t_k: int, block_size: int, causal: bool, device: torch.device | str) -> Tensor:
    """Per query block, the number of leading key blocks fully visible to all its queries: `(NQB,)` int32."""
    n_qb = -(-t_q // block_size)
    if not causal:
        return torch.full((n_qb,), t_k // block_size, dtype=torch.int32, device=device)
    q_lo = torch.arange(n_qb, device=device) * block_size + (t_k - t_q)
    return (torch.clamp(q_lo + 1, min=0, max=t_k) // block_size).to(torch.int32)


def visible_blocks(t_q: int, t_k: int, block_size: int, causal: bool, device: torch.device | str) -> Tensor:
    """`(NQB, NKB)` bool: key blocks that at least one query of the row may see."""
    n_qb, n_kb = -(-t_q // block_size), -(-t_k // block_size)
    kb = torch.arange(n_kb, device=device)
    vis = torch.ones(n_qb, n_kb, dtype=torch.bool, device=device)
    if causal:
        q_hi = torch.clamp((torch.arange(n_qb, device=device) + 1) * block_size, max=t_q) - 1 + (t_k - t_q)
        vis = kb[None, :] * block_size <= q_hi[:, None]
    return vis


def mask_to_index(block_mask: Tensor, t_q: int, t_k: int, block_size: int, *, causal: bool) -> BlockIndex:
    """Compact a `(B, H, NQB, NKB)` bool block mask into an ascending :class:`BlockIndex`.

    Blocks no query of the row can see (past the causal limit) are dropped.
    """
    n_kb = block_mask.shape[-1]
    dev = block_mask.device
    kb = torch.arange(n_kb, device=dev, dtype=torch.int32)
    mask = block_mask & visible_blocks(t_q, t_k, block_size, causal, dev)
    cnt = mask.sum(-1, dtype=torch.int32)
    max_c = max(int(cnt.max().item()) if cnt.numel() else 0, 1)
    big = torch.iinfo(torch.int32).max
    idx = torch.sort(torch.where(mask, kb, big), dim=-1).values[..., :max_c]
    idx = torch.where(idx == big, 0, idx).contiguous()
    limit = full_block_count(t_q, t_k, block_size, causal, dev)
    n_full = (mask & (kb[None, :] < limit[:, None])).sum(-1, dtype=torch.int32)
    return BlockIndex(idx, cnt.contiguous(), n_full.contiguous())


def index_to_mask(index: BlockIndex, n_kb: int) -> Tensor:
    """Expand a :class:`BlockIndex` back into a `(B, H, NQB, NKB)` bool mask."""
    idx = index.idx.long()
    valid = torch.arange(idx.shape[-1], device=idx.device) < index.cnt[..., None]
    mask = torch.zeros(*idx.shape[:-1], n_kb + 1, dtype=torch.bool, device=idx.device)
    mask.scatter_(-1, torch.where(valid, idx, n_kb), True)
    return mask[..., :n_kb]


def streaming_blocks(
    t_q: int, t_k: int, block_size: int, sink: int, local: int, device: torch.device | str
) -> Tensor:
    """`(NQB, NKB)` bool: the key blocks a streaming head's query block visits.

    The sink blocks, then the local window up to the causal limit: the ranges the forward kernel
    derives arithmetically.
    """
    n_qb, n_kb = -(-t_q // block_size), -(-t_k // block_size)
    qb = torch.arange(n_qb, device=device)
    q_lo = qb * block_size + (t_k - t_q)
    q_hi = torch.clamp((qb + 1) * block_size, max=t_q) - 1 + (t_k - t_q)
    last = q_hi // block_size
    n_sink = torch.clamp(last + 1, max=-(-sink // block_size))
    first_local = torch.maximum(torch.clamp(q_lo - local + 1, min=0) // block_size, n_sink)
    kb = torch.arange(n_kb, device=device)[None, :]
    return (kb < n_sink[:, None]) | ((kb >= first_local[:, None]) & (kb <= last[:, None]))
