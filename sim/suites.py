"""Suite registry: ``list_suites()``, ``get_suite(name)``, ``make_env(suite, task, render=None)``.

Suites resolve lazily: each name maps to a module providing ``build_suite(name) -> Suite`` and
``make_env(suite_name, task: TaskSpec, render: RenderConfig, **kw) -> SimEnv``; the module is
imported on first use (the LIBERO module needs the ``libero`` extra).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from sim.base import SimEnv, Suite, TaskSpec, unknown_name_error
from sim.configs import RenderConfig

__all__ = ["SUITE_MODULES", "Suite", "TaskSpec", "get_suite", "list_suites", "make_env"]

SUITE_MODULES: dict[str, str] = {
    "embedded_goal": "sim.envs.embedded_goal",
    "robosuite_stock": "sim.envs.robosuite_stock",
    "libero_spatial": "sim.envs.libero",
    "libero_object": "sim.envs.libero",
    "libero_goal": "sim.envs.libero",
    "libero_10": "sim.envs.libero",
}
EMBEDDED_SUITES = ("embedded_goal", "robosuite_stock")


def list_suites() -> list[str]:
    """Names of all registered suites."""
    return list(SUITE_MODULES)


def _module(name: str) -> Any:
    if name not in SUITE_MODULES:
        raise unknown_name_error("suite", name, list_suites())
    return importlib.import_module(SUITE_MODULES[name])


@cache
def get_suite(name: str) -> Suite:
    """Return the suite ``name``; unknown names raise a ``ValueError`` listing the known suites."""
    suite = _module(name).build_suite(name)
    if suite.name != name:
        raise RuntimeError(f"module {SUITE_MODULES[name]} built suite {suite.name!r} for {name!r}")
    return suite


def make_env(suite: str, task: str | int | TaskSpec, render: RenderConfig | None = None, **kw: Any) -> SimEnv:
    """Build the env of ``suite``/``task``.

    Args:
        suite: a name from :func:`list_suites`.
        task: task name, index or ``TaskSpec`` of that suite.
        render: camera settings (default ``RenderConfig()``: 128x128, fast settings).
        **kw: suite-specific options passed to the suite module's ``make_env``.
    """
    spec = get_suite(suite).task(task.name if isinstance(task, TaskSpec) else task)
    return _module(suite).make_env(suite, spec, render if render is not None else RenderConfig(), **kw)
