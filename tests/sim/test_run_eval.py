"""sim.run_eval: results.json schema, in-process and Ray workers, videos, chunk execution, errors."""

import json
import math

import numpy as np
import pytest

from tests.utils import require_mujoco

pytestmark = [pytest.mark.sim, require_mujoco]


def _cfg(tmp_path, **kw):
    from sim.configs import RenderConfig
    from sim.eval_configs import EvalConfig

    base = {
        "suite": "robosuite_stock",
        "tasks": ["lift"],
        "episodes": 2,
        "policy": "expert",
        "out_dir": str(tmp_path / "eval"),
        "render": RenderConfig(image_size=64),
    }
    base.update(kw)
    return EvalConfig(**base)


def check_results_schema(res: dict, n_tasks: int, episodes: int) -> None:
    """Every field DESIGN.md 'Eval results' and the reproducibility guarantees promise."""
    for key in ("suite", "policy", "policy_id", "seed", "mean_success", "tasks", "episodes", "protocol"):
        assert key in res, key
    assert res["schema_version"] == 1
    assert len(res["tasks"]) == n_tasks
    assert len(res["episodes"]) == n_tasks * episodes
    for name, t in res["tasks"].items():
        assert t["episodes"] == episodes
        assert t["successes"] == sum(e["success"] for e in res["episodes"] if e["task"] == name)
        assert math.isclose(t["success_rate"], t["successes"] / episodes)
        lo, hi = t["ci95"]
        assert 0.0 <= lo <= t["success_rate"] <= hi <= 1.0
        assert isinstance(t["instruction"], str)
        assert t["instruction"]
    assert math.isclose(res["mean_success"], np.mean([t["success_rate"] for t in res["tasks"].values()]))
    for e in res["episodes"]:
        assert set(e) >= {"task", "init_state", "success", "steps", "wall_s", "seed"}
        assert 1 <= e["steps"] <= res["protocol"]["max_steps"][e["task"]]
    p = res["protocol"]
    assert set(p) >= {"max_steps", "wait_steps", "replan_every", "init_states", "control_fps", "render"}
    assert set(p["max_steps"]) == set(p["wait_steps"]) == set(res["tasks"])
    v = res["versions"]
    assert v["robosuite"].startswith("1.4")
    assert v["mujoco"].startswith("3.")
    assert v["numpy"]
    assert res["wall_time_s"] > 0


def test_expert_in_process_writes_valid_results(tmp_path):
    from sim.run_eval import evaluate

    res = evaluate(_cfg(tmp_path, episodes=2))
    on_disk = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    check_results_schema(on_disk, n_tasks=1, episodes=2)
    assert on_disk["tasks"]["lift"]["success_rate"] == 1.0  # the scripted expert solves Lift
    assert [e["init_state"] for e in on_disk["episodes"]] == [0, 1]
    assert on_disk["protocol"]["wait_steps"]["lift"] == 10
    assert (tmp_path / "eval" / "config.yaml").exists()
    assert not list((tmp_path / "eval").glob(".*.tmp"))


def test_same_init_state_same_episode(tmp_path):
    """Episode i always starts from init state i: two runs give identical per-episode records."""
    from sim.configs import RenderConfig
    from sim.run_eval import evaluate

    off = RenderConfig(enabled=False)  # the records do not depend on pixels; the expert reads sim state
    a = evaluate(_cfg(tmp_path / "a", episodes=2, first_init_state=3, render=off))
    b = evaluate(_cfg(tmp_path / "b", episodes=2, first_init_state=3, render=off))
    strip = [{k: e[k] for k in ("init_state", "success", "steps", "seed")} for e in a["episodes"]]
    assert strip == [{k: e[k] for k in ("init_state", "success", "steps", "seed")} for e in b["episodes"]]
    assert [e["init_state"] for e in a["episodes"]] == [3, 4]


def test_random_policy_fails_a_hard_task(tmp_path):
    from sim.configs import RenderConfig
    from sim.run_eval import evaluate

    res = evaluate(
        _cfg(tmp_path, tasks=["stack"], policy="random", episodes=3, render=RenderConfig(enabled=False))
    )
    assert res["tasks"]["stack"]["successes"] == 0
    limit = res["protocol"]["max_steps"]["stack"]
    assert all(e["steps"] == limit for e in res["episodes"])  # ran to the step limit, never succeeded
    assert res["policy_id"] == "random:0"


def test_unknown_names_are_refused(tmp_path):
    from sim.run_eval import evaluate

    with pytest.raises(ValueError, match="robosuite_stock"):
        evaluate(_cfg(tmp_path, suite="robosuit_stock"))
    with pytest.raises(ValueError, match="lift"):
        evaluate(_cfg(tmp_path, tasks=["lfit"]))
    with pytest.raises(ValueError, match="checkpoint directory"):
        evaluate(_cfg(tmp_path, policy="no/such/dir"))
    assert not (tmp_path / "eval" / "results.json").exists()


class _SubgoalPolicy:
    """A chunking policy that also predicts a subgoal image (what a CoT-VLA policy returns)."""

    metadata = {"n_action_steps": 3, "policy_id": "subgoal-test"}  # noqa: RUF012

    def __init__(self):
        self.calls = 0

    def reset(self):
        self.calls = 0

    def infer(self, obs):
        self.calls += 1
        h = obs["observation.images.agentview"].shape[0]
        img = np.zeros((h // 2, h // 2, 3), np.uint8)
        img[..., 1] = 255  # green, easy to find in the video
        return {"actions": np.zeros((8, 7), np.float32), "subgoal_image": img}


def test_chunk_executor_follows_policy_metadata():
    from sim.policies import ChunkExecutor

    pol = _SubgoalPolicy()
    ex = ChunkExecutor(pol)
    assert ex.replan_every == 3
    obs = {"observation.images.agentview": np.zeros((16, 16, 3), np.uint8)}
    for _ in range(10):
        ex.act(obs)
    assert pol.calls == 4  # ceil(10 / 3)
    ex = ChunkExecutor(pol, replan_every=8)
    ex.reset()
    for _ in range(10):
        ex.act(obs)
    assert pol.calls == 2
    with pytest.raises(ValueError, match="replan_every"):
        ChunkExecutor(pol, replan_every=0)


def test_chunk_executor_rejects_bad_actions():
    from sim.policies import ChunkExecutor

    class Bad:
        def reset(self):
            pass

        def infer(self, obs):
            return {"actions": np.zeros((4, 6), np.float32)}

    with pytest.raises(ValueError, match=r"\(chunk, 7\)"):
        ChunkExecutor(Bad()).act({})


def test_videos_show_cameras_and_subgoal(tmp_path, monkeypatch):
    import imageio.v3 as iio

    import sim.run_eval as run_eval

    monkeypatch.setattr(run_eval, "make_policy", lambda spec, env, seed=0: _SubgoalPolicy())
    res = run_eval.evaluate(
        _cfg(tmp_path, policy="random", episodes=2, max_steps=6, video=True, max_videos_per_task=1)
    )
    vids = [e.get("video") for e in res["episodes"]]
    assert vids[0] is not None
    assert vids[1] is None
    frames = iio.imread(vids[0])
    assert frames.shape == (6, 64, 64 * 2 + 64, 3)  # agentview | wrist | subgoal (resized to 64)
    green = frames[:, :, 128:, :].astype(int)
    assert green[..., 1].mean() > 200
    assert green[..., 0].mean() < 40
    assert res["protocol"]["replan_every"] == 3


def test_wilson_interval_known_values():
    from sim.run_eval import wilson_ci

    lo, hi = wilson_ci(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4)
    assert math.isclose(hi, 0.7634, abs_tol=1e-4)
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0
    assert math.isclose(hi, 0.2775, abs_tol=1e-4)
    lo, hi = wilson_ci(50, 50)
    assert math.isclose(lo, 0.9287, abs_tol=1e-4)
    assert hi == 1.0


def test_two_ray_workers_match_in_process(tmp_path):
    """Two Ray actors run the same episodes as one in-process worker, with identical records."""
    from sim.configs import RenderConfig
    from sim.run_eval import evaluate

    kw = {"tasks": ["lift", "stack"], "episodes": 2, "policy": "random", "max_steps": 15}
    kw["render"] = RenderConfig(enabled=False)
    one = evaluate(_cfg(tmp_path / "one", num_workers=1, **kw))
    two = evaluate(_cfg(tmp_path / "two", num_workers=2, **kw))
    check_results_schema(two, n_tasks=2, episodes=2)
    keys = ("task", "init_state", "success", "steps", "seed")
    assert [{k: e[k] for k in keys} for e in one["episodes"]] == [
        {k: e[k] for k in keys} for e in two["episodes"]
    ]
    assert two["num_workers"] == 2


def test_checkpoint_directory_policy(tmp_path):
    """A checkpoint directory loads through vla.load_policy; its n_action_steps drives replanning."""
    pytest.importorskip("torch")
    from sim.run_eval import evaluate
    from vla import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    res = evaluate(_cfg(tmp_path, policy=str(ckpt), episodes=1, max_steps=4, video=True))
    meta = res["policy_metadata"]
    assert res["policy_id"] == meta["model_id"]
    assert res["protocol"]["replan_every"] == meta["n_action_steps"]
    assert res["episodes"][0]["steps"] == 4
    assert "torch" in res["versions"]
    import imageio.v3 as iio

    frames = iio.imread(res["episodes"][0]["video"])
    n_panels = 3 if meta["use_cot"] else 2
    assert frames.shape[2] == 64 * n_panels


def test_bad_policy_specs():
    from sim.policies import make_policy, validate_spec

    with pytest.raises(ValueError, match="random:<seed>"):
        validate_spec("randomly")
    with pytest.raises(ValueError, match="integer"):
        validate_spec("random:abc")
    with pytest.raises(ValueError, match="needs the env"):
        make_policy("expert")
    pol = make_policy("random:7")
    a = pol.infer({})["actions"]
    pol.reset()
    assert a.shape == (10, 7)
    assert a.dtype == np.float32
    assert np.abs(a).max() <= 1.0
    np.testing.assert_array_equal(pol.infer({})["actions"], a)  # reset re-seeds


def test_worker_env_shares_cores(monkeypatch):
    from sim.run_eval import worker_env_vars

    monkeypatch.delenv("LP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert worker_env_vars(1)["LP_NUM_THREADS"] == "4"
    assert worker_env_vars(2)["LP_NUM_THREADS"] == "2"
    assert worker_env_vars(8)["LP_NUM_THREADS"] == "1"
    assert worker_env_vars(2)["MUJOCO_GL"] == "egl"
    monkeypatch.setenv("LP_NUM_THREADS", "3")  # an explicit setting wins
    assert worker_env_vars(2)["LP_NUM_THREADS"] == "3"


def test_cli_prints_table_and_accepts_hyphenated_flags(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    args = [sys.executable, "-m", "sim.run_eval", "--suite=robosuite_stock", "--tasks=[lift]", "--episodes=2"]
    args += [
        "--policy=random",
        "--max-steps=3",
        "--num-workers=1",
        "--render.enabled=false",
        f"--out_dir={out}",
    ]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "lift" in p.stdout
    assert "0/2" in p.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["max_steps"]["lift"] == 3
    bad = subprocess.run(
        [*args[:3], "--suite=nope"], capture_output=True, text=True, timeout=120, check=False
    )
    assert bad.returncode != 0
    assert "embedded_goal" in bad.stderr  # the error lists the known suites
