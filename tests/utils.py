"""Skip helpers shared by the test suite."""

from __future__ import annotations

import importlib.util

import pytest


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


require_cuda = pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
require_mujoco = pytest.mark.skipif(
    not (_has("mujoco") and _has("robosuite")), reason="needs mujoco+robosuite"
)
require_libero = pytest.mark.skipif(not _has("libero"), reason="needs hf-libero (extra `libero`)")
