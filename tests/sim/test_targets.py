"""sim.targets: the named cube's start position from the init-state banks, written into windows folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.utils import require_mujoco

pytestmark = [pytest.mark.sim, require_mujoco]

SUITE = "embedded_goal"


def _reset_positions(task_env, task: str, split: str, index: int) -> dict[str, np.ndarray]:
    env = task_env(SUITE, task)
    env.use_init_split(split)
    try:
        env.reset(options={"init_state": index})
        return {c: env.privileged()["objects"][c]["pos"] for c in ("red", "green", "blue")}
    finally:
        env.use_init_split("eval")  # the env is shared with other tests


@pytest.mark.parametrize(
    ("task", "split", "index"),
    [("put_red_cube_on_plate", "train", 3), ("stack_green_cube_on_red_cube", "eval", 7)],
)
def test_bank_positions_are_the_positions_after_reset(task_env, task, split, index):
    from sim.targets import initial_object_positions

    pos = initial_object_positions(SUITE, task, split)
    for cube, want in _reset_positions(task_env, task, split, index).items():
        np.testing.assert_allclose(pos[cube][index], want, atol=1e-9, err_msg=cube)


def test_named_object_is_the_cube_to_pick():
    from sim.suites import get_suite
    from sim.targets import named_object

    suite = get_suite(SUITE)
    assert named_object(suite.task("put_blue_cube_in_bin")) == "blue"
    assert named_object(suite.task("stack_red_cube_on_blue_cube")) == "red"
    with pytest.raises(ValueError, match="names no object"):
        named_object(get_suite("robosuite_stock").tasks[0])


# Two saved episodes out of order in the report, and a dropped attempt between them.
ATTEMPTS = [
    dict(
        task="stack_red_cube_on_blue_cube",
        init_state=2,
        init_split="train",
        success=True,
        steps=4,
        episode_index=1,
    ),
    dict(task="put_green_cube_in_bin", init_state=5, init_split="train", success=False, steps=300),
    dict(
        task="put_green_cube_in_bin", init_state=6, init_split="train", success=True, steps=3, episode_index=0
    ),
]


def _collect_folder(tmp_path: Path) -> Path:
    root = tmp_path / "demos"
    root.mkdir()
    (root / "collect_report.json").write_text(json.dumps({"suite": SUITE, "attempts": ATTEMPTS}))
    return root


def _windows_like(root: Path):
    """A windows folder whose episodes are the saved ones of ``root`` (first states from the bank)."""
    from sim.base import load_init_state_file
    from sim.suites import get_suite
    from vla.windows import Windows

    saved = sorted((a for a in ATTEMPTS if "episode_index" in a), key=lambda a: a["episode_index"])
    lengths = [a["steps"] for a in saved]
    n = sum(lengths)
    states = torch.zeros(n, 8)
    tasks = [get_suite(SUITE).task(a["task"]).instruction for a in saved]
    start = 0
    for a, length in zip(saved, lengths, strict=True):
        settled = load_init_state_file(SUITE, a["task"], a["init_split"])[2]["settled_state"]
        states[start : start + length] = torch.from_numpy(settled[a["init_state"]])
        start += length
    ep = torch.repeat_interleave(torch.arange(len(saved)), torch.tensor(lengths))
    g = torch.Generator().manual_seed(0)
    return Windows(
        frames={
            "observation.images.agentview": torch.randint(
                0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8
            )
        },
        actions=torch.zeros(n, 7),
        states=states,
        episode_index=ep,
        task_index=ep.clone(),
        tasks=tasks,
        fps=20,
        source=f"local/demos @ {root}",
    )


def test_window_targets_are_the_named_cubes_start_positions(tmp_path, task_env):
    from sim.targets import add_window_targets, episode_targets, window_targets
    from vla.windows import load_windows, save_windows

    root = _collect_folder(tmp_path)
    green = _reset_positions(task_env, "put_green_cube_in_bin", "train", 6)["green"]
    red = _reset_positions(task_env, "stack_red_cube_on_blue_cube", "train", 2)["red"]
    np.testing.assert_allclose(episode_targets(root), np.stack([green, red]), atol=1e-9)
    w = _windows_like(root)
    d = save_windows(w, tmp_path / "win")
    add_window_targets(d)  # the dataset folder is read from the windows metadata
    target = load_windows(d).target_pos.numpy()
    np.testing.assert_allclose(target, np.stack([green] * 3 + [red] * 4), atol=1e-6)
    np.testing.assert_array_equal(window_targets(d, [str(root)]), target)

    with pytest.raises(ValueError, match="2 episodes, the reports"):
        window_targets(d, [str(root), str(root)])
    moved = dataclasses.replace(w, states=w.states + 0.01)
    with pytest.raises(ValueError, match="not the bank's settled state"):
        window_targets(save_windows(moved, tmp_path / "moved"), [str(root)])
    renamed = dataclasses.replace(w, tasks=list(reversed(w.tasks)))
    with pytest.raises(ValueError, match="instruction"):
        window_targets(save_windows(renamed, tmp_path / "renamed"), [str(root)])
    with pytest.raises(FileNotFoundError, match=r"collect_report\.json"):
        window_targets(d, [str(tmp_path)])


def test_approach_only_clears_rows_from_the_first_reach():
    from sim.targets import approach_only

    target = np.repeat(np.array([[0.0, 0.0, 0.8], [0.1, 0.1, 0.8]]), [4, 3], axis=0)
    states = np.zeros((7, 8))
    states[:4, 0] = [0.3, 0.1, 0.02, 0.3]  # episode 0 reaches (2 cm) at its third frame, then leaves
    states[4:, :2] = 0.5  # episode 1 never comes within 4 cm
    out = approach_only(target, states, np.array([0, 4]), np.array([4, 3]), reach_cm=4.0)
    assert np.isnan(out[2:4]).all()
    np.testing.assert_array_equal(out[:2], target[:2])
    np.testing.assert_array_equal(out[4:], target[4:])
    assert not np.isnan(target).any()  # the input is left alone
