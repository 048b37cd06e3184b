"""Scripted experts from privileged simulator state: ``make_expert(env) -> policy``.

The returned object speaks the policy interface (``reset()``, ``infer(obs) -> {"actions": (1, 7)}``).
Dispatch is on ``env.suite_name``; ``libero_*`` suites go to ``sim.experts.libero.make_libero_expert``.
Every factory takes ``(env, *, noise=0.0, seed=0)``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["EXPERT_MODULES", "make_expert"]

# suite name (or prefix ending in "*") -> (module, factory function)
EXPERT_MODULES: dict[str, tuple[str, str]] = {
    "embedded_goal": ("sim.experts.embedded", "make_embedded_expert"),
    "robosuite_stock": ("sim.experts.stock", "make_stock_expert"),
    "libero_*": ("sim.experts.libero", "make_libero_expert"),
}


def make_expert(env: Any, *, noise: float = 0.0, seed: int = 0) -> Any:
    """Build the scripted expert of ``env``'s task.

    Args:
        env: a ``SimEnv`` (needs ``suite_name``, ``task`` and ``privileged()``).
        noise: std of Gaussian noise on the arm actions, for demo diversity (default deterministic).
        seed: seed of that noise.

    Raises:
        ValueError: the suite has no expert.
    """
    suite = env.suite_name
    for key, (module, fn) in EXPERT_MODULES.items():
        if suite == key or (key.endswith("*") and suite.startswith(key[:-1])):
            factory = getattr(importlib.import_module(module), fn)
            return factory(env, noise=noise, seed=seed)
    raise ValueError(
        f"no scripted expert for suite {suite!r}; experts exist for: {', '.join(EXPERT_MODULES)}"
    )
