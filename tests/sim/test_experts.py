"""Scripted experts succeed from fixed init states; output follows the policy interface."""

from __future__ import annotations

import numpy as np
import pytest

from tests.sim.conftest import embedded_tasks
from tests.utils import require_mujoco

pytestmark = [pytest.mark.sim, require_mujoco]


def _rollout(env, expert, init_state: int) -> dict:
    obs, info = env.reset(options={"init_state": init_state})
    expert.reset()
    done = False
    while not done:
        out = expert.infer(obs)
        actions = out["actions"]
        assert actions.shape == (1, 7)
        assert actions.dtype == np.float32
        assert np.all(np.abs(actions) <= 1.0)
        obs, _, terminated, truncated, info = env.step(actions[0])
        done = terminated or truncated
    return info


def _make(suite, task):
    from sim.configs import RenderConfig
    from sim.suites import make_env

    return make_env(suite, task, render=RenderConfig.off())


@pytest.mark.parametrize(("suite", "task"), embedded_tasks(), ids=lambda x: x)
def test_expert_succeeds(suite, task, task_env):
    from sim.experts import make_expert

    env = task_env(suite, task)
    expert = make_expert(env)
    # A different init state per task, so the sample covers the set.
    i = sum(map(ord, task)) % env.num_init_states
    info = _rollout(env, expert, i)
    assert info["success"], f"{suite}/{task} expert failed from init state {i} after {info['steps']} steps"
    assert info["steps"] < env.task.max_steps


@pytest.mark.slow
@pytest.mark.parametrize(("suite", "task"), embedded_tasks(), ids=lambda x: x)
def test_expert_succeeds_on_more_init_states(suite, task):
    from sim.experts import make_expert

    env = _make(suite, task)
    try:
        expert = make_expert(env)
        wins = sum(_rollout(env, expert, i)["success"] for i in range(0, 50, 10))
        assert wins >= 4
    finally:
        env.close()


def test_expert_noise_is_seeded_and_optional():
    from sim.experts import make_expert

    env = _make("robosuite_stock", "lift")
    try:
        env.reset(options={"init_state": 0})
        clean = make_expert(env)
        a0 = clean.infer(None)["actions"]
        np.testing.assert_array_equal(a0, make_expert(env).infer(None)["actions"])  # deterministic by default
        n1 = make_expert(env, noise=0.1, seed=1).infer(None)["actions"]
        n1b = make_expert(env, noise=0.1, seed=1).infer(None)["actions"]
        n2 = make_expert(env, noise=0.1, seed=2).infer(None)["actions"]
        np.testing.assert_array_equal(n1, n1b)
        assert not np.array_equal(n1, n2)
        assert not np.array_equal(n1, a0)
        assert n1[0, 6] == a0[0, 6]  # the gripper command is not noised
        with pytest.raises(ValueError, match="noise"):
            make_expert(env, noise=-1.0)
    finally:
        env.close()


def test_expert_for_unknown_suite_is_refused():
    from sim.experts import make_expert

    class Fake:
        suite_name = "my_suite"

    with pytest.raises(ValueError, match=r"no scripted expert for suite 'my_suite'.*embedded_goal"):
        make_expert(Fake())


def test_waypoint_math():
    from sim.experts.waypoints import R_DOWN, gripper_yaw, mat_to_axis_angle, rot_z, wrap

    for yaw in (-2.5, -0.3, 0.0, 1.2, 3.0):
        assert gripper_yaw(rot_z(yaw) @ R_DOWN) == pytest.approx(yaw)
    for v in (np.array([0.1, -0.2, 0.3]), np.array([0.0, 0.0, 3.1]), np.array([2.0, 0.5, -1.0])):
        from robosuite.utils import transform_utils as T

        R = T.quat2mat(T.axisangle2quat(v))
        np.testing.assert_allclose(mat_to_axis_angle(R), v, atol=1e-3)
    assert wrap(np.pi / 2 + 0.1, np.pi / 2) == pytest.approx(0.1)
    assert wrap(-0.3, 2 * np.pi) == pytest.approx(-0.3)
