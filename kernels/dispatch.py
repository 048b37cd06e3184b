"""Shared kernel dispatch: choose the Triton or the reference implementation of an op (STYLE.md §5)."""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

Impl = Literal["auto", "triton", "reference"]


def triton_importable() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, *tensors: torch.Tensor, op: str, unsupported: str | None = None) -> str:
    """Return ``"triton"`` or ``"reference"`` for one call of ``op``.

    Args:
        impl: ``"auto"``, ``"triton"`` or ``"reference"``.
        *tensors: the call's input tensors (their device decides ``auto``).
        op: op name, used in error messages.
        unsupported: why the Triton kernel cannot take this call, or None when it can.

    Raises:
        ValueError: unknown ``impl``, or ``impl="triton"`` on a call the kernel does not support.
        RuntimeError: ``impl="triton"`` forced but Triton is missing or the tensors are not on CUDA
            (set ``TRITON_INTERPRET=1`` before importing triton to run the kernel on the CPU).
    """
    if impl not in ("auto", "triton", "reference"):
        raise ValueError(f"{op}: impl must be 'auto', 'triton' or 'reference', got {impl!r}")
    if impl == "reference":
        return "reference"
    on_cuda = all(t.is_cuda for t in tensors)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if impl == "triton":
        if not triton_importable():
            raise RuntimeError(f"{op}: impl='triton' but triton is not installed; use impl='reference'")
        if not (on_cuda or interpret):
            raise RuntimeError(
                f"{op}: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import)"
            )
        if unsupported is not None:
            raise ValueError(f"{op}: impl='triton' cannot run this call: {unsupported}")
        return "triton"
    return "triton" if on_cuda and unsupported is None and triton_importable() else "reference"
