"""Attention and scan ops: one folder per op (reference, Triton, dispatch).

``attention`` is the entry point.
"""

from kernels.attention import SparsePrefillConfig, attention

__all__ = ["SparsePrefillConfig", "attention"]
