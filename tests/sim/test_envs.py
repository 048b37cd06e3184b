"""SimEnv, suite registry, rendering and fixed init states on the embedded suites."""

from __future__ import annotations

import numpy as np
import pytest

from tests.sim.conftest import embedded_tasks
from tests.utils import require_mujoco

pytestmark = [pytest.mark.sim, require_mujoco]

AGENT, WRIST, STATE = "observation.images.agentview", "observation.images.wrist", "observation.state"


def test_registry_lists_suites_and_tasks():
    from sim.suites import get_suite, list_suites

    names = list_suites()
    for s in (
        "embedded_goal",
        "robosuite_stock",
        "libero_spatial",
        "libero_object",
        "libero_goal",
        "libero_10",
    ):
        assert s in names
    goal = get_suite("embedded_goal")
    assert len(goal.tasks) >= 8
    assert {t.scene for t in goal.tasks} == {goal.tasks[0].scene}  # one shared scene
    assert len({t.instruction for t in goal.tasks}) == len(goal.tasks)  # the instruction tells them apart
    stock = get_suite("robosuite_stock")
    assert stock.task_names == ["lift", "stack", "pick_place_can", "nut_assembly_square", "door"]
    assert stock.task(0).name == "lift"
    assert stock.task("door").instruction == "open the door"


def test_unknown_suite_lists_known_ones():
    from sim.suites import get_suite, make_env

    with pytest.raises(ValueError, match=r"known suites: .*embedded_goal.*robosuite_stock") as e:
        get_suite("embedded_gaol")
    assert "Did you mean 'embedded_goal'" in str(e.value)
    with pytest.raises(ValueError, match="unknown suite"):
        make_env("nope", "lift")


def test_unknown_task_lists_known_ones():
    from sim.suites import get_suite, make_env

    with pytest.raises(ValueError, match=r"known task.*lift.*door") as e:
        make_env("robosuite_stock", "lfit")
    assert "Did you mean 'lift'" in str(e.value)
    with pytest.raises(ValueError, match="out of range"):
        get_suite("embedded_goal").task(99)


def test_render_config_validates():
    from sim.configs import RenderConfig

    with pytest.raises(ValueError, match="image_size"):
        RenderConfig(image_size=3)
    with pytest.raises(ValueError, match="backend"):
        RenderConfig(backend="glx")


@pytest.mark.parametrize(("suite", "task"), embedded_tasks(), ids=lambda x: x)
def test_env_checker_and_golden_start_states(suite, task, task_env):
    """gymnasium's env checker passes; stored init states load, fit the scene and settle as generated.

    The golden part fails on a mujoco or robosuite upgrade that changes the scene or its physics.
    """
    from gymnasium.utils.env_checker import check_env

    from sim.base import load_init_state_file

    states, meta, extra = load_init_state_file(suite, task)
    assert states.shape[0] == 50
    assert meta["suite"] == suite
    assert meta["task"] == task
    assert {"robosuite", "mujoco", "seed", "nq", "nv"} <= set(meta)
    env = task_env(suite, task)
    check_env(env, skip_render_check=True)
    model = env.rs_env.sim.model
    assert (meta["nq"], meta["nv"]) == (model.nq, model.nv)
    assert states.shape[1] >= 1 + model.nq + model.nv
    obs, info = env.reset(options={"init_state": 31})
    assert env.observation_space.contains(obs)
    assert obs["task"] == env.instruction == env.task.instruction
    assert info["init_state"] == 31
    assert not info["success"]
    np.testing.assert_allclose(obs[STATE], extra["settled_state"][31], atol=1e-5)
    np.testing.assert_allclose(env.rs_env.sim.data.qpos, extra["settled_qpos"][31], atol=1e-5)


def test_reset_to_init_state_is_deterministic(goal_env):
    env = goal_env
    a, _ = env.reset(options={"init_state": 7})
    for _ in range(3):
        env.step(env.action_space.sample())  # disturb the scene between the two resets
    b, _ = env.reset(options={"init_state": 7})
    for key in (AGENT, WRIST, STATE):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    c, _ = env.reset(options={"init_state": 8})
    assert not np.array_equal(a[AGENT], c[AGENT])  # another init state is another scene
    # Rollouts from the same init state with the same actions stay identical.
    acts = np.random.default_rng(0).uniform(-1, 1, (5, 7)).astype(np.float32)
    runs = []
    for _ in range(2):
        env.reset(options={"init_state": 7})
        runs.append([env.step(x)[0][STATE] for x in acts])
    np.testing.assert_array_equal(np.array(runs[0]), np.array(runs[1]))


def test_reset_validates_init_state(goal_env):
    with pytest.raises(ValueError, match=r"init_state must be an int in \[0, 50\)"):
        goal_env.reset(options={"init_state": 50})
    with pytest.raises(ValueError, match="unknown reset options"):
        goal_env.reset(options={"init_sate": 1})


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.zeros(6), r"shape \(7,\)"),
        (np.zeros((1, 7)), r"shape \(7,\)"),
        (np.array([0, 0, np.nan, 0, 0, 0, 0]), "non-finite"),
        (np.array([0, 0, 0, np.inf, 0, 0, 0]), "non-finite"),
        (["a"] * 7, "numeric"),
    ],
    ids=["short", "chunk", "nan", "inf", "text"],
)
def test_bad_action_refused_before_mujoco(goal_env, action, match):
    env = goal_env
    env.reset(options={"init_state": 0})
    sim = env.rs_env.sim
    qpos, t, ts = np.array(sim.data.qpos), float(sim.data.time), env.rs_env.timestep
    with pytest.raises(ValueError, match=match):
        env.step(action)
    np.testing.assert_array_equal(sim.data.qpos, qpos)
    assert sim.data.time == t
    assert env.rs_env.timestep == ts
    assert env.steps == 0


def test_step_counts_and_truncates(goal_env):
    env = goal_env
    env.reset(options={"init_state": 2})
    noop = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)
    for i in range(3):
        _, reward, terminated, truncated, info = env.step(noop)
        assert info["steps"] == i + 1
        assert reward == 0.0
        assert not terminated
        assert not truncated
    env._steps = env.task.max_steps - 1
    *_, truncated, info = env.step(noop)
    assert truncated
    assert not info["success"]


def _project(env, camera: str, point: np.ndarray, size: int) -> tuple[float, float]:
    """Pixel (row, col) of a world point in an upright image of a MuJoCo camera."""
    sim = env.rs_env.sim
    cid = sim.model.camera_name2id(camera)
    pos, mat = np.array(sim.data.cam_xpos[cid]), np.array(sim.data.cam_xmat[cid]).reshape(3, 3)
    pc = mat.T @ (point - pos)  # camera frame: x right, y up, looking along -z
    f = (size / 2) / np.tan(np.deg2rad(sim.model.cam_fovy[cid]) / 2)
    return size / 2 - f * pc[1] / -pc[2], size / 2 + f * pc[0] / -pc[2]


def test_images_are_upright_and_not_mirrored(goal_env):
    env = goal_env
    obs, _ = env.reset(options={"init_state": 4})
    img = obs[AGENT].astype(int)
    size = img.shape[0]
    objs = env.privileged()["objects"]
    for color, channel in (("red", 0), ("green", 1), ("blue", 2)):
        others = [c for c in range(3) if c != channel]
        mask = (img[..., channel] > 100) & np.all(img[..., others] < img[..., [channel]] - 60, axis=-1)
        assert mask.sum() >= 3, f"{color} cube not visible"
        rows, cols = np.nonzero(mask)
        r, c = _project(env, "agentview", objs[color]["pos"], size)
        assert abs(rows.mean() - r) < size * 0.06, (color, "row", rows.mean(), r)
        assert abs(cols.mean() - c) < size * 0.06, (color, "col", cols.mean(), c)
    # The table (bright) fills the bottom of the agentview; the robot (dark) sits at the top.
    assert img[-size // 4 :].mean() > img[: size // 4].mean()


def test_several_envs_in_one_process_render_their_own_scene(goal_env):
    from sim.configs import RenderConfig
    from sim.suites import make_env

    ref = goal_env.reset(options={"init_state": 3})[0][AGENT]
    other = make_env("robosuite_stock", "lift", render=RenderConfig.tiny())
    try:
        lift_img = other.reset(options={"init_state": 0})[0][AGENT]
        np.testing.assert_array_equal(goal_env.reset(options={"init_state": 3})[0][AGENT], ref)
        assert not np.array_equal(lift_img, ref)
    finally:
        other.close()  # frees its GL objects in its own context
    np.testing.assert_array_equal(goal_env.reset(options={"init_state": 3})[0][AGENT], ref)


def test_render_settings_reach_the_mujoco_context(goal_env):
    import mujoco

    ctx = goal_env.rs_env.sim._render_context_offscreen
    assert goal_env.rs_env.sim.model.vis.quality.offsamples == 0
    assert ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 0
    assert ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 0


def test_render_off_keeps_keys_and_zero_images():
    from sim.configs import RenderConfig
    from sim.suites import make_env

    env = make_env("robosuite_stock", "lift", render=RenderConfig.off())
    try:
        obs, _ = env.reset(options={"init_state": 0})
        assert obs[AGENT].shape == (128, 128, 3)
        assert not obs[AGENT].any()
        assert env.rs_env.sim._render_context_offscreen is None  # no GL context at all
    finally:
        env.close()


def test_door_placement_is_part_of_the_init_state():
    from sim.configs import RenderConfig
    from sim.suites import make_env

    env = make_env("robosuite_stock", "door", render=RenderConfig.off())
    try:
        frames = []
        for i in (0, 1, 0):
            env.reset(options={"init_state": i})
            frames.append(env.privileged()["objects"]["frame"])
        assert not np.allclose(frames[0], frames[1])  # the door is placed per init state...
        np.testing.assert_array_equal(frames[0], frames[2])  # ...and restored exactly
    finally:
        env.close()


_RENDER_SNIPPET = """
import sys, numpy as np
from sim.configs import RenderConfig
from sim.suites import make_env
env = make_env("robosuite_stock", "lift", render=RenderConfig(image_size=48, backend=sys.argv[1] or None))
obs, _ = env.reset(options={"init_state": 0})
np.save(sys.argv[2], obs["observation.images.agentview"])
print(env.gl_backend)
"""


def test_headless_backends_render_the_same_scene(tmp_path):
    """Without MUJOCO_GL a fresh process picks EGL (else OSMesa); OSMesa renders the same image."""
    import os
    import subprocess
    import sys

    from sim.render import probe_backend

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    outs = {}
    for be in ("", "osmesa"):
        if be and not probe_backend(be):
            pytest.skip(f"{be} not installed")
        path = tmp_path / f"img_{be or 'auto'}.npy"
        res = subprocess.run(
            [sys.executable, "-c", _RENDER_SNIPPET, be, str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        outs[be or "auto"] = (res.stdout.strip().splitlines()[-1], np.load(path))
    assert outs["auto"][0] == ("egl" if probe_backend("egl") else "osmesa")
    assert outs["osmesa"][0] == "osmesa"
    img_ref, img = outs["auto"][1], outs["osmesa"][1]
    assert img.shape == (48, 48, 3)
    assert img.std() > 10  # a real scene, not a blank frame
    assert np.abs(img.astype(int) - img_ref.astype(int)).mean() < 2.0
