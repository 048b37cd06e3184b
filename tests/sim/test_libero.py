"""LIBERO through hf-libero: offline setup, suites, official init states, env contract, scripted expert."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim import libero_setup
from sim.policies import ChunkExecutor
from sim.run_eval import run_episode
from tests.utils import require_libero

pytestmark = [pytest.mark.sim, pytest.mark.libero, require_libero]


def _local_assets() -> bool:
    root = libero_setup.libero_benchmark_root()
    if root is None:
        return False
    try:
        return libero_setup.resolve_local_assets() is not None or not libero_setup.missing_asset_entries(
            root / "assets"
        )
    except FileNotFoundError:
        return False


# Building a scene offline needs a local asset folder (else hf-libero would download from the hub).
require_assets = pytest.mark.skipif(not _local_assets(), reason="no local LIBERO assets (VLA_LIBERO_ASSETS)")

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}


# -- setup: config file and assets ---------------------------------------------------------------


def test_config_written_atomically_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path / "cfg"))
    root = libero_setup.libero_benchmark_root()
    assert root is not None
    path = libero_setup.write_config(root)
    assert path == tmp_path / "cfg" / "config.yaml"
    import yaml

    cfg = yaml.safe_load(path.read_text())
    assert list(cfg) == list(libero_setup.CONFIG_KEYS)
    assert Path(cfg["bddl_files"], "libero_spatial").is_dir()
    assert Path(cfg["init_states"], "libero_object").is_dir()
    # Idempotent: an existing file (possibly edited by the user) is kept unless forced.
    path.write_text("benchmark_root: /elsewhere\n")
    libero_setup.write_config(root)
    assert path.read_text() == "benchmark_root: /elsewhere\n"
    libero_setup.write_config(root, force=True)
    assert yaml.safe_load(path.read_text())["benchmark_root"] == str(root)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def _import_libero(config_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIBERO_CONFIG_PATH": str(config_dir)}
    return subprocess.run(
        [sys.executable, "-c", "import libero.libero"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_setup_command_lets_libero_import_without_a_prompt(tmp_path):
    # Without the config, hf-libero asks on stdin (EOFError with no stdin): the trap we remove.
    bare = _import_libero(tmp_path / "bare")
    assert bare.returncode != 0
    assert "EOFError" in bare.stderr
    cfg_dir = tmp_path / "cfg"
    env = {**os.environ, "LIBERO_CONFIG_PATH": str(cfg_dir)}
    for _ in range(2):  # idempotent and quiet
        out = subprocess.run(
            [sys.executable, "-m", "sim.libero_setup"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == ""
    assert (cfg_dir / "config.yaml").is_file()
    ok = _import_libero(cfg_dir)
    assert ok.returncode == 0, ok.stderr
    # The suite registry alone (no setup command run before) also never prompts.
    fresh = {**os.environ, "LIBERO_CONFIG_PATH": str(tmp_path / "fresh")}
    code = "from sim.suites import get_suite; assert len(get_suite('libero_spatial').tasks) == 10"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=fresh,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fresh" / "config.yaml").is_file()


def _fake_assets(folder: Path) -> Path:
    for entry in libero_setup.REQUIRED_ASSET_ENTRIES:
        p = folder / entry
        if p.suffix:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("<mujoco/>")
        else:
            p.mkdir(parents=True, exist_ok=True)
    return folder


def test_assets_env_var_must_be_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_LIBERO_ASSETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"scenes/libero_tabletop_base_style\.xml"):
        libero_setup.resolve_local_assets()
    _fake_assets(tmp_path)
    assert libero_setup.resolve_local_assets() == tmp_path.resolve()


def test_link_assets_symlinks_and_retargets(tmp_path):
    pkg = tmp_path / "libero"
    pkg.mkdir()
    a, b = _fake_assets(tmp_path / "a"), _fake_assets(tmp_path / "b")
    link = libero_setup.link_assets(pkg, a)
    assert link == pkg / "assets"
    assert link.is_symlink()
    assert link.resolve() == a
    assert libero_setup.link_assets(pkg, a) == link  # no-op
    libero_setup.link_assets(pkg, b)
    assert (pkg / "assets").resolve() == b
    # A real asset folder installed by the user is never replaced.
    (pkg / "assets").unlink()
    (pkg / "assets").mkdir()
    libero_setup.link_assets(pkg, a)
    assert not (pkg / "assets").is_symlink()


@require_assets
def test_installed_setup_points_hf_libero_at_local_assets():
    assets = libero_setup.ensure_libero_ready()
    if assets is None:
        pytest.skip("no local LIBERO assets (online users get the hub download)")
    import libero.libero as L

    assert not libero_setup.missing_asset_entries(Path(L.get_assets_path()))
    assert Path(L.get_assets_path()).resolve() == assets.resolve()


# -- suites and init states ------------------------------------------------------------------


def test_suites_match_hf_libero_benchmark():
    from libero.libero import benchmark

    from sim.suites import get_suite

    for name, limit in LIMITS.items():
        suite = get_suite(name)
        bench = benchmark.get_benchmark_dict()[name]()
        assert len(suite.tasks) == bench.get_num_tasks() == 10
        for i, task in enumerate(suite.tasks):
            assert task.name == bench.get_task(i).name
            assert task.instruction == bench.get_task(i).language
            assert (task.max_steps, task.wait_steps) == (limit, 10)
            assert Path(task.extra["bddl_file"]).is_file()


def test_unknown_names_list_known_ones():
    from sim.suites import get_suite, make_env

    suite = get_suite("libero_object")
    with pytest.raises(ValueError, match="pick_up_the_alphabet_soup_and_place_it_in_the_basket") as e:
        suite.task("pick_up_the_alphabet_soup")
    assert "Did you mean" in str(e.value)
    with pytest.raises(ValueError, match="libero_spatial"):
        get_suite("libero_spacial")
    with pytest.raises(ValueError, match="out of range"):
        make_env("libero_goal", 10)


# -- the env -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def object_env():
    """libero_object task 0 without rendering (the expert needs no cameras)."""
    from sim.configs import RenderConfig
    from sim.suites import make_env

    env = make_env("libero_object", 0, RenderConfig.off())
    yield env
    env.close()


@pytest.fixture(scope="module")
def rendered_env():
    """libero_object task 1 with both cameras at 64x64."""
    from sim.configs import RenderConfig
    from sim.suites import make_env

    task = "pick_up_the_cream_cheese_and_place_it_in_the_basket"
    env = make_env("libero_object", task, RenderConfig.tiny())
    yield env
    env.close()


@require_assets
def test_init_states_are_the_official_files(object_env):
    import torch
    from libero.libero import get_libero_path

    task = object_env.task
    path = Path(get_libero_path("init_states"), "libero_object", task.extra["init_states_file"])
    official = np.asarray(torch.load(path, weights_only=False))
    assert object_env.init_states.shape == official.shape == (50, official.shape[1])
    np.testing.assert_array_equal(object_env.init_states, official)
    # Init state i is official state i: right after restoring it (before wait steps), qpos matches.
    object_env._restore_state(object_env.init_states[7])
    sim = object_env.rs_env.sim
    np.testing.assert_allclose(sim.data.qpos, official[7][1 : 1 + sim.model.nq])


@require_assets
def test_reset_step_contract_and_determinism(rendered_env):
    obs, info = rendered_env.reset(options={"init_state": 3})
    assert info == {"init_state": 3, "success": False}
    for key in ("observation.images.agentview", "observation.images.wrist"):
        img = obs[key]
        assert img.shape == (64, 64, 3)
        assert img.dtype == np.uint8
        assert img.std() > 5
    assert obs["observation.state"].shape == (8,)
    assert obs["task"] == "pick up the cream cheese and place it in the basket"
    assert rendered_env.observation_space.contains(obs)
    # Upright: robosuite renders bottom-up (OpenGL); the observation is that frame flipped once.
    raw = rendered_env.rs_env.sim.render(width=64, height=64, camera_name="agentview")
    np.testing.assert_array_equal(obs["observation.images.agentview"], raw[::-1])
    obs2, _ = rendered_env.reset(options={"init_state": 3})
    np.testing.assert_array_equal(obs["observation.state"], obs2["observation.state"])
    np.testing.assert_array_equal(obs["observation.images.agentview"], obs2["observation.images.agentview"])
    other, _ = rendered_env.reset(options={"init_state": 4})
    assert not np.array_equal(other["observation.images.agentview"], obs["observation.images.agentview"])
    a = np.zeros(7, np.float32)
    a[2] = 1.0  # move up
    z0 = other["observation.state"][2]
    for _ in range(5):
        obs, reward, term, trunc, info = rendered_env.step(a)
    assert obs["observation.state"][2] > z0 + 0.02
    assert (reward, term, trunc, info["success"]) == (0.0, False, False, False)
    with pytest.raises(ValueError, match="non-finite"):
        rendered_env.step(np.full(7, np.nan))


def _expert_episode(env, init_state: int) -> tuple[float, bool, dict]:
    """Run the scripted expert from ``init_state`` until the episode ends: ``(reward, terminated, info)``."""
    from sim.experts import make_expert

    obs, _ = env.reset(options={"init_state": init_state})
    expert = make_expert(env)
    expert.reset()
    for _ in range(env.task.max_steps):
        obs, reward, term, trunc, info = env.step(expert.infer(obs)["actions"][0])
        if term or trunc:
            break
    return reward, term, info


@require_assets
def test_expert_solves_libero_object_and_success_follows_state(object_env):

    reward, term, info = _expert_episode(object_env, 0)
    assert term
    assert info["success"]
    assert reward == 1.0
    # Success is a function of the simulator state: restore the solved state onto a fresh episode.
    solved = object_env.rs_env.sim.get_state().flatten()
    object_env.reset(options={"init_state": 0})
    assert not object_env.is_success()
    object_env.rs_env.sim.set_state_from_flattened(solved)
    object_env.rs_env.sim.forward()
    assert object_env.is_success()
    soup = object_env.privileged()["objects"]["objects"]["alphabet_soup_1"]["pos"]
    basket = object_env.privileged()["objects"]["sites"]["basket_1_contain_region"]["pos"]
    assert np.linalg.norm(soup[:2] - basket[:2]) < 0.08


@require_assets
def test_expert_solves_libero_spatial():
    from sim.configs import RenderConfig
    from sim.experts import make_expert
    from sim.suites import make_env

    env = make_env("libero_spatial", 0, RenderConfig.off())
    try:
        expert = make_expert(env)
        ep = run_episode(env, ChunkExecutor(expert, 1), 11, seed=0)
        assert ep.success, f"expert failed, last phase {expert.phase_name}"
    finally:
        env.close()


@require_assets
def test_expert_turns_on_the_stove_and_refuses_unsupported_goals():
    from sim.configs import RenderConfig
    from sim.experts import make_expert
    from sim.suites import make_env

    env = make_env("libero_goal", "turn_on_the_stove", RenderConfig.off())
    try:
        expert = make_expert(env)
        ep = run_episode(env, ChunkExecutor(expert, 1), 5, seed=0)
        assert ep.success, f"expert failed, last phase {expert.phase_name}"
        assert env.privileged()["objects"]["joints"]["flat_stove_1_button"]["qpos"] >= 0.5
    finally:
        env.close()
    env = make_env("libero_goal", "push_the_plate_to_the_front_of_the_stove", RenderConfig.off())
    try:
        with pytest.raises(ValueError, match="pushing is not supported"):
            make_expert(env)
    finally:
        env.close()
    env = make_env("libero_10", 0, RenderConfig.off())
    try:
        with pytest.raises(ValueError, match="one predicate"):
            make_expert(env)
    finally:
        env.close()


# -- the train bank (demos are collected away from the official eval states) -------------------------


@require_assets
def test_train_bank_is_disjoint_from_the_official_states_and_solvable():
    from sim.base import load_init_state_file
    from sim.configs import RenderConfig
    from sim.suites import get_suite, make_env

    for spec in get_suite("libero_object").tasks:
        states, meta, arrays = load_init_state_file("libero_object", spec.name, "train")
        assert states.shape[0] == 100
        assert meta["split"] == "train"
        assert arrays["settled_state"].shape == (100, 8)
    env = make_env("libero_object", 0, RenderConfig.off())
    try:
        official = env.init_states.copy()
        env.use_init_split("train")
        env.reset(options={"init_state": 0})
        train = env.init_states
        assert train.shape == (100, official.shape[1])
        assert env.init_state_meta["split"] == "train"
        # every train scene differs from every official one (object placements, not only time)
        gap = np.abs(train[:, None, 1:] - official[None, :, 1:]).max(-1)
        assert gap.min() > 1e-3
        assert len({tuple(np.round(s[1:], 6)) for s in train}) == 100
        # the train scenes are the same task: the expert solves one
        assert _expert_episode(env, 5)[2]["success"]
    finally:
        env.close()


@require_assets
def test_a_bank_unlike_the_official_one_is_refused():
    from sim.base import load_init_states
    from sim.configs import RenderConfig
    from sim.envs.make_init_states import check_like_official
    from sim.suites import make_env

    env = make_env("libero_object", 0, RenderConfig.off())
    try:
        states, _ = load_init_states("libero_object", env.task.name, "train")
        check_like_official("libero_object", env.task.name, env, states)  # the committed bank passes
        moved = states.copy()
        moved[:, 1 + env.rs_env.sim.model.nq - 1] += 0.2  # one qpos entry (the last) 0.2 off
        with pytest.raises(ValueError, match="does not reproduce"):
            check_like_official("libero_object", env.task.name, env, moved)
    finally:
        env.close()


@require_assets
def test_train_bank_missing_or_eval_regeneration_are_clear_errors(tmp_path, monkeypatch):
    import sim.base
    from sim.configs import RenderConfig
    from sim.envs.make_init_states import generate
    from sim.suites import make_env

    with pytest.raises(ValueError, match="official init states"):
        generate("libero_object", "pick_up_the_milk_and_place_it_in_the_basket", num=2, split="eval")
    monkeypatch.setattr(sim.base, "INIT_STATES_DIR", tmp_path)
    env = make_env("libero_object", 0, RenderConfig.off())
    try:
        env.use_init_split("train")
        with pytest.raises(FileNotFoundError, match="make_init_states --suites libero_object --split train"):
            env.reset(options={"init_state": 0})
    finally:
        env.close()
