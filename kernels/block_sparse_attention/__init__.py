"""Block-sparse attention: reference, Triton forward over compacted block lists, streaming heads."""

from kernels.block_sparse_attention.index import BlockIndex, index_to_mask, mask_to_index
from kernels.block_sparse_attention.op import BlockSparseAttnFunction, block_sparse_attn
from kernels.block_sparse_attention.reference import HEAD_MASKED, HEAD_STREAMING, block_sparse_attn_ref

__all__ = [
    "HEAD_MASKED",
    "HEAD_STREAMING",
    "BlockIndex",
    "BlockSparseAttnFunction",
    "block_sparse_attn",
    "block_sparse_attn_ref",
    "index_to_mask",
    "mask_to_index",
]
