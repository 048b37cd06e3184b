"""vla: the CoT-VLA policy (subgoal image, then an action chunk), its tokenizer, backbone and training.

Imports are lazy so ``import vla`` stays light (no torch until a name is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CotVlaConfig", "InferencePolicy", "PolicyConfig", "load_policy", "make_tiny_checkpoint"]

_LAZY = {
    "CotVlaConfig": "vla.configs",
    "PolicyConfig": "vla.configs",
    "InferencePolicy": "vla.inference",
    "load_policy": "vla.inference",
    "make_tiny_checkpoint": "vla.inference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vla' has no attribute {name!r}")
