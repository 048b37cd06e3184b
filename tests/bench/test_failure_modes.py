"""bench.failure_modes in MuJoCo: the expert reaches every milestone in order; a still arm none."""

from __future__ import annotations

import json
import types

import pytest

from bench import failure_modes as fm

pytestmark = pytest.mark.sim


def test_expert_reaches_every_milestone_in_order(tmp_path):
    doc = fm.main(
        ["--policy=expert", "--tasks=put_red_cube_on_plate", "--episodes=1", f"--out_dir={tmp_path}"]
    )
    ep = doc["episodes"][0]
    assert ep["furthest"] == "success"
    first = ep["first_step"]
    assert first["reached"] <= first["closed"] < first["lifted"] < first["success"]
    assert ep["min_xy_to_cube_m"] < 0.02
    assert ep["closest_low_cube"] == "red"
    assert doc["summary"] == {
        "put_red_cube_on_plate": {"none": 0, "reached": 0, "closed": 0, "lifted": 0, "success": 1}
    }
    assert json.loads((tmp_path / "failure_modes.json").read_text())["summary"] == doc["summary"]


class _Still:
    """A policy that holds the arm still with the gripper closed (never near the cube)."""

    def __init__(self):
        self.metadata = {"n_action_steps": 5}

    def reset(self):
        pass

    def infer(self, obs):
        import numpy as np

        return {"actions": np.tile(np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32), (5, 1))}


def test_an_arm_that_never_moves_reaches_nothing():
    from sim.policies import ChunkExecutor
    from sim.suites import make_env

    env = make_env("embedded_goal", "put_blue_cube_in_bin")
    try:
        ep = fm.run_episode(env, ChunkExecutor(_Still()), init_state=0, seed=0, max_steps=20)
    finally:
        env.close()
    assert ep["furthest"] == "none"
    assert ep["first_step"] == {}
    assert ep["steps"] == 20
    assert ep["min_xy_to_cube_m"] > 0.02
    assert ep["closest_low_cube"] is None  # it never came down near any cube


def test_clear_errors():
    with pytest.raises(ValueError, match="names no cube"):
        fm.cube_of(types.SimpleNamespace(task=types.SimpleNamespace(name="lift", extra={})))
    with pytest.raises(SystemExit, match="no_such_task"):
        fm.main(["--policy=expert", "--tasks=no_such_task", "--episodes=1"])
    with pytest.raises(SystemExit, match="episodes"):
        fm.main(["--policy=expert", "--episodes=0"])
