"""XAttention: antidiagonal block scoring and threshold selection feeding block-sparse attention."""

from kernels.xattention.op import xattention_prefill, xattn_select
from kernels.xattention.reference import antidiagonal_block_mass_ref, select_blocks_ref, xattn_select_ref

__all__ = [
    "antidiagonal_block_mass_ref",
    "select_blocks_ref",
    "xattention_prefill",
    "xattn_select",
    "xattn_select_ref",
]
