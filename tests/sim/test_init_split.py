"""Demos come from a bank of init states disjoint from the one run_eval scores on."""

from __future__ import annotations

import numpy as np
import pytest

from sim.base import init_state_path, load_init_state_file
from sim.collect import resolve_init_split
from sim.eval_configs import CollectConfig
from sim.suites import get_suite

TASKS = [t.name for t in get_suite("embedded_goal").tasks]


@pytest.mark.parametrize("task", TASKS)
def test_train_bank_is_disjoint_from_eval_bank(task):
    ev, ev_meta, ev_extra = load_init_state_file("embedded_goal", task, "eval")
    tr, tr_meta, tr_extra = load_init_state_file("embedded_goal", task, "train")
    assert tr.shape[1] == ev.shape[1]
    assert len(tr) >= 56
    assert tr_meta["split"] == "train"
    assert tr_meta["seed"] != ev_meta["seed"]
    # no train placement replays an eval one (object poses differ in every pair)
    dist = np.abs(tr[:, None, :] - ev[None, :, :]).max(-1)
    assert dist.min() > 1e-3
    # same generator, same sampler: both banks cover the same region of the table
    assert tr_extra["settled_state"].shape[1] == ev_extra["settled_state"].shape[1]


def test_env_switches_bank(goal_env):
    obs_eval, _ = goal_env.reset(options={"init_state": 0})
    goal_env.use_init_split("train")
    try:
        obs_train, _info = goal_env.reset(options={"init_state": 0})
        assert goal_env.num_init_states == len(
            load_init_state_file("embedded_goal", goal_env.task.name, "train")[0]
        )
        assert not np.allclose(
            obs_eval["observation.images.agentview"], obs_train["observation.images.agentview"]
        )
        golden = load_init_state_file("embedded_goal", goal_env.task.name, "train")[2]["settled_state"][0]
        np.testing.assert_allclose(obs_train["observation.state"], golden, atol=1e-4)
    finally:
        goal_env.use_init_split("eval")
    with pytest.raises(ValueError, match="unknown init-state split"):
        goal_env.use_init_split("test")


def test_collect_resolves_split():
    assert resolve_init_split("embedded_goal", TASKS[0], "auto") == "train"
    assert resolve_init_split("robosuite_stock", "lift", "auto") == (
        "train" if init_state_path("robosuite_stock", "lift", "train").exists() else "eval"
    )
    assert resolve_init_split("embedded_goal", TASKS[0], "eval") == "eval"
    assert CollectConfig().init_split == "auto"
    with pytest.raises(ValueError, match="init_split"):
        CollectConfig(init_split="holdout")
    with pytest.raises(ValueError, match="unknown init-state split"):
        init_state_path("embedded_goal", TASKS[0], "holdout")


def test_run_eval_can_score_the_train_bank(tmp_path):
    """--init_split=train: the same evaluation on the scenes demos come from (diagnosis), recorded as such."""
    from sim.configs import RenderConfig
    from sim.eval_configs import EvalConfig
    from sim.run_eval import evaluate

    def run(split: str) -> dict:
        cfg = EvalConfig(
            suite="embedded_goal",
            tasks=[TASKS[0]],
            episodes=2,
            policy="expert",
            init_split=split,
            render=RenderConfig.off(),
            out_dir=str(tmp_path / split),
        )
        return evaluate(cfg)

    ev, tr = run("eval"), run("train")
    assert ev["protocol"]["init_split"] == "eval"
    assert tr["protocol"]["init_split"] == "train"
    assert tr["mean_success"] == 1.0
    # other scenes, other expert trajectories
    assert [e["steps"] for e in ev["episodes"]] != [e["steps"] for e in tr["episodes"]]
    with pytest.raises(ValueError, match="init_split"):
        EvalConfig(init_split="auto")
