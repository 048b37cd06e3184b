"""Shared fixtures of the sim tests: envs are expensive to build, so they are module-scoped."""

from __future__ import annotations

import pytest

EMBEDDED_SUITES = ("embedded_goal", "robosuite_stock")


def embedded_tasks() -> list[tuple[str, str]]:
    """(suite, task) pairs of every embedded task."""
    from sim.suites import get_suite

    return [(s, t.name) for s in EMBEDDED_SUITES for t in get_suite(s).tasks]


@pytest.fixture(scope="session")
def task_env():
    """``task_env(suite, task)``: one 32x32 rendering env per task, shared by the tests of the session.

    Building a robosuite env costs seconds; the env-checker, golden-state and expert tests of a
    task reuse it.
    """
    from sim.configs import RenderConfig
    from sim.suites import make_env

    cache = {}

    def get(suite: str, task: str):
        if (suite, task) not in cache:
            cache[(suite, task)] = make_env(suite, task, render=RenderConfig(image_size=32))
        return cache[(suite, task)]

    yield get
    for env in cache.values():
        env.close()


@pytest.fixture(scope="module")
def goal_env():
    """A rendering ``embedded_goal`` env at 64x64."""
    from sim.configs import RenderConfig
    from sim.suites import make_env

    env = make_env("embedded_goal", "put_red_cube_on_plate", render=RenderConfig.tiny())
    yield env
    env.close()
