"""The windows folder (vla/windows.py): LeRobotDataset -> arrays + a video per camera -> the same windows."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.configs import CotVlaConfig
from vla.constants import ACTION, OBS_AGENTVIEW, OBS_STATE
from vla.data import DatasetConfig, compute_norm_stats, make_dataset
from vla.windows import load_windows, read_lerobot, save_windows

WRIST = "observation.images.wrist"


@pytest.fixture(scope="module")
def video_synth(tmp_path_factory) -> Path:
    from vla.data import make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "synthetic_video", n_episodes=3, length=14, videos=True, seed=3
    )


@pytest.fixture(scope="module")
def windows_dir(video_synth, tmp_path_factory) -> Path:
    w = read_lerobot("local/synthetic", str(video_synth), size=32)
    return save_windows(w, tmp_path_factory.mktemp("win") / "synthetic")


def test_read_lerobot_matches_lerobot_decoder(video_synth):
    """Front-to-back decoding picks the very frames LeRobot's per-timestamp decoder returns."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vla.data import load_frames

    w = read_lerobot("local/synthetic", str(video_synth), size=32)
    ds = LeRobotDataset("local/synthetic", root=str(video_synth))
    for key in (OBS_AGENTVIEW, WRIST):
        ref = load_frames(ds, key, 32)
        assert torch.equal(w.frames[key], ref), key
    assert w.tasks == ["move the square to the right", "move the square down"]
    assert w.episode_index.tolist() == [0] * 14 + [1] * 14 + [2] * 14
    assert w.task_index.tolist() == [0] * 14 + [1] * 14 + [0] * 14
    hf = ds.hf_dataset.with_format("numpy")
    np.testing.assert_array_equal(w.actions.numpy(), np.stack(list(hf[ACTION])))


def test_windows_folder_gives_the_preloaded_windows(video_synth, windows_dir):
    cfg = CotVlaConfig.tiny()
    ref = make_dataset(DatasetConfig(repo_id="local/synthetic", root=str(video_synth), preload=True), cfg)
    win = make_dataset(DatasetConfig(windows=str(windows_dir)), cfg)
    assert len(win) == len(ref) == 42
    for i in (0, 5, 12, 13, 14, 27, 41):  # starts, ends, clamped subgoals, padded chunks
        a, b = ref[i], win[i]
        for key in (OBS_STATE, ACTION, "action_is_pad"):
            torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)
        for key in (OBS_AGENTVIEW, WRIST):  # H.264 CRF 14: close, not bit-exact
            assert b[key].shape == a[key].shape
            assert (b[key] - a[key]).abs().mean() < 3 / 255, key
        assert a["task"] == b["task"]
    # the subgoal frame is the one k steps ahead (clamped at the end): nearer to it than to frame t
    item = win[2]
    now, goal = item[OBS_AGENTVIEW][0], item[OBS_AGENTVIEW][1]
    true_goal = ref[2 + cfg.subgoal_offset][OBS_AGENTVIEW][0]
    assert (goal - true_goal).abs().mean() < (now - true_goal).abs().mean()
    s_ref, s_win = compute_norm_stats(ref), compute_norm_stats(win)
    np.testing.assert_allclose(s_win.action_q99, s_ref.action_q99)
    np.testing.assert_allclose(s_win.state_mean, s_ref.state_mean, rtol=1e-6)
    sub = make_dataset(DatasetConfig(windows=str(windows_dir), episodes=[1]), cfg)
    assert len(sub) == 14
    assert sub[0]["task"] == "move the square down"


def test_windows_training_runs_without_lerobot_dataset(windows_dir, tmp_path, monkeypatch):
    """vla-train on a windows folder never opens a LeRobotDataset (the GPU machine has no LeRobot)."""
    import draccus
    import lerobot.datasets.lerobot_dataset as lds

    from vla.scripts.train import TrainConfig, run

    def refuse(*a, **k):
        raise AssertionError("LeRobotDataset opened while training from a windows folder")

    monkeypatch.setattr(lds, "LeRobotDataset", refuse)
    monkeypatch.setattr(lds, "LeRobotDatasetMetadata", refuse)
    root = Path(__file__).resolve().parents[2]
    cfg = draccus.parse(
        TrainConfig,
        config_path=root / "configs" / "train" / "cot_vla_tiny.yaml",
        args=[
            f"--dataset.windows={windows_dir}",
            f"--output_dir={tmp_path / 'run'}",
            "--optim.steps=3",
            "--optim.warmup_steps=1",
            "--tokenizer_steps=2",
            "--num_workers=0",
            "--tensorboard=false",
        ],
    )
    out = run(cfg)
    assert np.isfinite(out["loss"])
    assert (tmp_path / "run" / "checkpoints" / "last" / "pretrained_model").is_dir()


def test_damaged_or_foreign_folders_give_clear_errors(windows_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="vla-export-windows"):
        load_windows(tmp_path)
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(windows_dir, bad)
    cams = sorted(bad.glob("camera*.mp4"))
    shutil.copy(cams[0], cams[1])
    w = load_windows(bad)  # same frame count: loads, but the frames are the other camera's
    assert torch.equal(w.frames[WRIST], w.frames[OBS_AGENTVIEW])
    (bad / cams[0].name).write_bytes(b"not a video")
    with pytest.raises(Exception):  # noqa: B017, PT011 (PyAV's error or ours)
        load_windows(bad)
    with pytest.raises(ValueError, match="not a folder"):
        DatasetConfig(windows=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="lacks cameras"):
        make_dataset(
            DatasetConfig(windows=str(windows_dir)), CotVlaConfig.tiny(camera_keys=["observation.images.top"])
        )


def test_concat_windows_renumbers_episodes_and_merges_tasks(windows_dir):
    from vla.windows import concat_windows

    w = load_windows(windows_dir)
    sub = dataclasses.replace(
        w,
        frames={k: v[14:] for k, v in w.frames.items()},
        actions=w.actions[14:],
        states=w.states[14:],
        episode_index=w.episode_index[14:] + 5,  # episodes 6, 7
        task_index=1 - w.task_index[14:],  # same instructions, other index order
        tasks=list(reversed(w.tasks)),
    )
    both = concat_windows([w, sub])
    assert both.episode_index.tolist() == [0] * 14 + [1] * 14 + [2] * 14 + [3] * 14 + [4] * 14
    assert both.tasks == w.tasks
    instr = [both.tasks[i] for i in both.task_index.tolist()]
    assert instr[42:] == [w.tasks[i] for i in w.task_index[14:].tolist()]
    assert torch.equal(both.frames[WRIST][42:], w.frames[WRIST][14:])
    with pytest.raises(ValueError, match="different cameras"):
        concat_windows([w, dataclasses.replace(sub, frames={WRIST: sub.frames[WRIST]})])
