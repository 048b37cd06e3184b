"""sim.vector_eval: one batched policy around env subprocesses gives the serial run_eval's episodes.

The two expensive runs (the plain in-process evaluation and the vector one, same config) happen once in a
module fixture; the tests below check one property each.
"""

from __future__ import annotations

import functools
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from tests.utils import require_mujoco

pytestmark = [pytest.mark.sim, require_mujoco]

TASKS = ["put_red_cube_on_plate", "put_green_cube_in_bin"]
RECORD_KEYS = ("task", "init_state", "seed", "steps", "success")


def _cfg(out_dir: Path, **kw):
    from sim.configs import RenderConfig
    from sim.eval_configs import EvalConfig

    base = {
        "suite": "embedded_goal",
        "tasks": TASKS,
        "episodes": 2,
        "max_steps": 12,
        "out_dir": str(out_dir),
        "render": RenderConfig(image_size=32),
    }
    base.update(kw)
    return EvalConfig(**base)


class _CountingPolicy:
    """Wraps a loaded `InferencePolicy` and records the batch size of every ``infer_batch`` call."""

    def __init__(self, inner):
        self.inner = inner
        self.metadata = inner.metadata
        self.batch_sizes: list[int] = []
        self.resets = 0

    def reset(self):
        self.resets += 1
        self.inner.reset()

    def infer(self, obs):
        return self.inner.infer(obs)

    def infer_batch(self, obs_list):
        self.batch_sizes.append(len(obs_list))
        return self.inner.infer_batch(obs_list)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    pytest.importorskip("torch")
    from vla.inference import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("vector") / "tiny", seed=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ckpt):
    """The plain and the vector (2 envs) evaluation of 2 tasks x 2 episodes, with executed actions."""
    import torch

    import sim.run_eval as run_eval
    import sim.vector_eval as vector_eval
    from vla.inference import load_policy

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("runs")
    serial_actions: dict[tuple[str, int], np.ndarray] = {}
    vector_actions: dict[tuple[str, int], np.ndarray] = {}
    real_run_episode = run_eval.run_episode

    def spy_run_episode(env, executor, init_state, **kw):
        ep = real_run_episode(env, executor, init_state, **kw)
        serial_actions[(env.task.name, init_state)] = np.stack([a for _obs, a in ep.frames])
        return ep

    counting = _CountingPolicy(load_policy(ckpt))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_eval, "run_episode", spy_run_episode)
        # replan_every=4 < the tiny chunk (10): the vector path must cut chunks as ChunkExecutor does.
        plain = run_eval.evaluate(_cfg(root / "plain", policy=str(ckpt), video=True, replan_every=4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_eval, "make_policy", lambda spec, env=None, seed=0: counting)
        spy = functools.partial(vector_eval.run_jobs_vector, actions_out=vector_actions)
        mp.setattr(vector_eval, "run_jobs_vector", spy)
        vec_cfg = _cfg(root / "vec", policy=str(ckpt), video=True, replan_every=4, vector_envs=2)
        vec = run_eval.evaluate(vec_cfg)
    return {
        "plain": plain,
        "vec": vec,
        "vec_cfg": vec_cfg,
        "serial_actions": serial_actions,
        "vector_actions": vector_actions,
        "policy": counting,
    }


def test_vector_records_match_plain_run(runs):
    plain, vec = runs["plain"], runs["vec"]
    assert [{k: e[k] for k in RECORD_KEYS} for e in vec["episodes"]] == [
        {k: e[k] for k in RECORD_KEYS} for e in plain["episodes"]
    ]
    assert [(e["task"], e["init_state"]) for e in vec["episodes"]] == [(t, i) for t in TASKS for i in (0, 1)]
    assert all(e["steps"] == 12 for e in vec["episodes"])  # a random tiny policy runs to the limit
    assert [set(e) for e in vec["episodes"]] == [set(e) for e in plain["episodes"]]


def test_vector_results_document_matches_plain(runs, tmp_path):
    import json

    plain, vec = runs["plain"], runs["vec"]
    assert set(vec) == set(plain)
    assert set(vec["protocol"]) == set(plain["protocol"])
    assert vec["protocol"]["vector_envs"] == 2
    assert plain["protocol"]["vector_envs"] == 1
    strip = {"vector_envs"}
    assert {k: v for k, v in vec["protocol"].items() if k not in strip} == {
        k: v for k, v in plain["protocol"].items() if k not in strip
    }
    for key in ("policy_id", "policy_metadata", "mean_success", "tasks", "num_workers", "ray", "seed"):
        assert vec[key] == plain[key], key
    assert "torch" in vec["versions"]
    assert "robosuite" in vec["versions"]
    on_disk = json.loads((Path(runs["vec_cfg"].out_dir) / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(vec))


def test_policy_was_called_in_batches(runs):
    pol = runs["policy"]
    replan = runs["vec"]["protocol"]["replan_every"]
    assert replan == 4
    assert max(pol.batch_sizes) == 2
    # 4 episodes of 12 steps, ceil(12 / replan) chunks each, answered two observations at a time.
    assert sum(pol.batch_sizes) == 4 * -(-12 // replan)
    assert len(pol.batch_sizes) < sum(pol.batch_sizes)
    assert pol.resets == 4  # once per episode


def test_vector_executes_the_serial_actions(runs):
    serial, vector = runs["serial_actions"], runs["vector_actions"]
    assert set(vector) == set(serial) == {(t, i) for t in TASKS for i in (0, 1)}
    for key, a in serial.items():
        assert vector[key].shape == a.shape == (12, 7), key
        np.testing.assert_allclose(vector[key], a, rtol=0, atol=1e-5, err_msg=str(key))
    # The comparison is not vacuous: the episodes' actions differ from each other.
    assert not np.allclose(serial[(TASKS[0], 0)], serial[(TASKS[1], 1)])


def test_vector_writes_one_video_per_episode(runs):
    import imageio.v3 as iio

    cfg, vec = runs["vec_cfg"], runs["vec"]
    videos = Path(cfg.out_dir) / "videos"
    assert sorted(p.relative_to(videos).as_posix() for p in videos.rglob("*.mp4")) == sorted(
        f"{t}/init{i:03d}_fail.mp4" for t in TASKS for i in (0, 1)
    )
    for e in vec["episodes"]:
        frames = iio.imread(e["video"])
        assert Path(e["video"]).parent == videos / e["task"]
        n_panels = 3 if vec["policy_metadata"]["use_cot"] else 2  # agentview | wrist | subgoal
        assert frames.shape == (e["steps"], 32, 32 * n_panels, 3)


def test_vector_config_refusals_before_any_process(tmp_path, ckpt):
    from sim.run_eval import evaluate

    with pytest.raises(ValueError, match="vector_envs must be >= 1"):
        _cfg(tmp_path, policy=str(ckpt), vector_envs=0)
    with pytest.raises(ValueError, match="--vector_envs=1"):
        _cfg(tmp_path, policy="expert", vector_envs=2)
    with pytest.raises(ValueError, match="--num_workers=1"):
        _cfg(tmp_path, policy=str(ckpt), vector_envs=2, num_workers=2)
    with pytest.raises(ValueError, match="force_ray"):
        _cfg(tmp_path, policy=str(ckpt), vector_envs=2, force_ray=True)
    with pytest.raises(ValueError, match="infer_batch"):
        evaluate(_cfg(tmp_path / "rnd", policy="random", vector_envs=2))
    assert not multiprocessing.active_children()
    assert not (tmp_path / "rnd").exists()  # refused before the run started


def test_worker_error_names_the_episode_and_leaves_no_process(tmp_path, ckpt):
    from sim.run_eval import evaluate

    # Init state 50 does not exist (the bank has 50): that worker's env raises in reset.
    cfg = _cfg(tmp_path, tasks=[TASKS[0]], policy=str(ckpt), vector_envs=2, first_init_state=49, max_steps=2)
    with pytest.raises(RuntimeError, match=r"put_red_cube_on_plate'?, init state 50: ValueError: init_state"):
        evaluate(cfg)
    assert not multiprocessing.active_children()
    assert not (tmp_path / "results.json").exists()


def _eval_shards():
    import importlib.util
    import sys

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("eval_shards", repo / "scripts/device/eval_shards.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_shards", mod)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["eval_shards"])
    return sys.modules["eval_shards"]


def test_eval_shards_passes_vector_envs(tmp_path):
    es = _eval_shards()
    shard = es.make_shards({"c": "/tmp/ckpt"}, ["put_red_cube_on_plate"], 0, 4, 1, tmp_path)[0]
    assert "--vector_envs=3" in es.shard_command(shard, "embedded_goal", 0, [], vector_envs=3)
    assert not any(a.startswith("--vector_envs") for a in es.shard_command(shard, "embedded_goal", 0, []))


def test_eval_shards_merges_vector_shards(runs, tmp_path):
    """Shards written by vector runs pass the completeness check and merge with ``vector_envs`` kept."""
    import json

    from sim.run_eval import write_json_atomic

    es = _eval_shards()
    vec = runs["vec"]
    shards = es.make_shards({"v": vec["policy"]}, TASKS, 0, 2, 1, tmp_path)
    for s in shards:  # one shard per task, cut out of the vector run's document
        doc = json.loads(json.dumps(vec))
        doc["tasks"] = {s.task: doc["tasks"][s.task]}
        doc["episodes"] = [e for e in doc["episodes"] if e["task"] == s.task]
        write_json_atomic(s.results, doc)
        assert s.is_complete()
    res = es.merge_variant("v", vec["policy"], shards, "embedded_goal", jobs=1)
    assert res["complete"]
    assert res["episodes"] == vec["episodes"]
    assert res["protocol"] == vec["protocol"]
    # overlapping episodes: the rate is over the shards' wall, no negative "overhead" is made up
    tp = res["throughput"]
    assert tp["shard_overhead_s_mean"] is None
    wall = sum(json.loads(s.results.read_text())["wall_time_s"] for s in shards)
    assert tp["env_steps_per_s_per_process"] == pytest.approx(tp["env_steps"] / wall, rel=1e-2)
