"""Shared fixtures of the sim tests: envs are expensive to build, so they are module-scoped."""

from __future__ import annotations

import pytest

EMBEDDED_SUITES = ("embedded_goal", "robosuite_stock")


def embedded_tasks() -> list[tuple[str, str]]:
    """(suite, task) pairs of every embedded task."""
    from sim.suites import get_suite

    return [(s, t.name) for s in EMBEDDED_SUITES for t in get_suite(s).tasks]


@pytest.fixture(scope="module")
def goal_env():
    """A rendering ``embedded_goal`` env at 64x64."""
    from sim.configs import RenderConfig
    from sim.suites import make_env

    env = make_env("embedded_goal", "put_red_cube_on_plate", render=RenderConfig.tiny())
    yield env
    env.close()
