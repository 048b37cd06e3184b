"""Demo collection: LeRobotDataset round trip, dropped failures, resume after SIGKILL, crash recovery."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.utils import require_mujoco

pytestmark = [pytest.mark.sim, require_mujoco]

SUITE, TASK = "robosuite_stock", "lift"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _cfg(root: Path, **kw):
    from sim.configs import RenderConfig
    from sim.eval_configs import CollectConfig

    base = {
        "suite": SUITE,
        "tasks": [TASK],
        "episodes_per_task": 2,
        "root": str(root),
        "repo_id": "test/demos",
        "commit_every": 1,
        "vcodec": "h264",
        "render": RenderConfig(image_size=64),
    }
    base.update(kw)
    return CollectConfig(**base)


def _load(root: Path, repo_id: str = "test/demos"):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo_id, root=root)


def test_round_trip_values_match_env(tmp_path, monkeypatch):
    """Collect 2 episodes, load them with LeRobotDataset: state, action, task exact; frames close."""
    import sim.collect as collect_mod

    produced = []
    real = collect_mod.run_episode

    def spy(*args, **kwargs):  # records exactly what the env produced (no behaviour change)
        ep = real(*args, **kwargs)
        produced.append(ep)
        return ep

    monkeypatch.setattr(collect_mod, "run_episode", spy)
    root = tmp_path / "ds"
    report = collect_mod.collect(_cfg(root, action_noise=0.02))
    assert report["saved_episodes"] == 2
    assert report["dropped_episodes"] == 0
    assert report["complete"]
    assert [a["init_state"] for a in report["attempts"]] == [0, 1]
    assert all(ep.success for ep in produced)

    ds = _load(root)
    assert ds.num_episodes == 2
    assert ds.fps == 20
    assert set(ds.meta.video_keys) == {"observation.images.agentview", "observation.images.wrist"}
    assert ds.num_frames == sum(len(ep.frames) for ep in produced)
    idx = 0
    for e, ep in enumerate(produced):
        for t, (obs, action) in enumerate(ep.frames):
            item = ds[idx]
            idx += 1
            assert int(item["episode_index"]) == e
            assert int(item["frame_index"]) == t
            np.testing.assert_array_equal(item["observation.state"].numpy(), obs["observation.state"])
            np.testing.assert_array_equal(item["action"].numpy(), action)
            assert item["task"] == "lift the red cube" == obs["task"]
            for key in ("observation.images.agentview", "observation.images.wrist"):
                decoded = item[key].numpy().transpose(1, 2, 0) * 255.0
                err = np.abs(decoded - obs[key].astype(np.float32))
                # h264 at 64x64 is lossy; a wrong frame, a flip or a colour swap is off by far more.
                assert err.mean() < 6.0, f"episode {e} frame {t} {key}: mean abs error {err.mean():.1f}"
                # a colour swap or an upside-down frame decodes farther from the env's frame
                for wrong in (obs[key][..., ::-1], obs[key][::-1]):
                    assert err.mean() < np.abs(decoded - wrong.astype(np.float32)).mean()
    # a shifted frame would also pass a loose tolerance: check the decoded frame is nearest its own step
    ep = produced[0]
    mid = len(ep.frames) // 2
    decoded = ds[mid]["observation.images.wrist"].numpy().transpose(1, 2, 0) * 255.0
    errs = [np.abs(decoded - o["observation.images.wrist"].astype(np.float32)).mean() for o, _ in ep.frames]
    assert int(np.argmin(errs)) == mid
    report_file = json.loads((root / "collect_report.json").read_text())
    assert report_file["per_task"] == {TASK: {"saved": 2, "dropped": 0}}
    assert not (tmp_path / "ds.staging").exists()
    assert not (tmp_path / "ds.old").exists()


def test_failed_episodes_are_dropped_and_counted(tmp_path):
    """A step limit too short for the expert: every episode fails, is dropped, and is counted."""
    from sim.collect import collect

    root = tmp_path / "ds"
    report = collect(_cfg(root, max_steps=3, episodes_per_task=3))
    assert report["saved_episodes"] == 0
    assert report["dropped_episodes"] == 3
    assert report["per_task"] == {TASK: {"saved": 0, "dropped": 3}}
    assert all(a["steps"] == 3 and not a["success"] for a in report["attempts"])
    assert not (root / "meta").exists()  # nothing entered a dataset
    # rerunning finds every attempt made and does nothing more
    again = collect(_cfg(root, max_steps=3, episodes_per_task=3))
    assert again["dropped_episodes"] == 3
    assert len(again["attempts"]) == 3


def test_mixed_settings_on_one_root_are_refused(tmp_path):
    from sim.collect import collect

    root = tmp_path / "ds"
    collect(_cfg(root, episodes_per_task=1))
    with pytest.raises(ValueError, match="action_noise"):
        collect(_cfg(root, episodes_per_task=2, action_noise=0.1))
    # extending the same collection is a resume: one more episode, not two
    report = collect(_cfg(root, episodes_per_task=2))
    assert report["saved_episodes"] == 2
    assert [a["init_state"] for a in report["attempts"]] == [0, 1]
    assert len(report["runs"]) == 2
    assert report["runs"][1]["resumed"]
    assert _load(root).num_episodes == 2


def test_unknown_suite_and_task(tmp_path):
    from sim.collect import collect

    with pytest.raises(ValueError, match="robosuite_stock"):
        collect(_cfg(tmp_path / "a", suite="robosuite_stok"))
    with pytest.raises(ValueError, match="lift"):
        collect(_cfg(tmp_path / "b", tasks=["lfit"]))


def test_recover_finishes_or_rolls_back_an_interrupted_commit(tmp_path):
    """Kill points inside a commit's swap: the dataset at root always loads afterwards."""
    from sim.collect import READY_MARKER, collect, recover

    root = tmp_path / "ds"
    collect(_cfg(root, episodes_per_task=1))
    staging, old = tmp_path / "ds.staging", tmp_path / "ds.old"

    # killed after `root -> root.old`, before `staging -> root`, staging ready: promote it
    shutil.copytree(root, staging)
    (staging / READY_MARKER).touch()
    os.replace(root, old)
    recover(root)
    assert _load(root).num_episodes == 1
    assert not old.exists()
    assert not staging.exists()
    assert not (root / READY_MARKER).exists()

    # killed while the staging batch was unfinished: drop it, keep root
    shutil.copytree(root, staging)
    (staging / "meta" / "info.json").write_text("{broken")
    recover(root)
    assert _load(root).num_episodes == 1
    assert not staging.exists()

    # killed after `root -> root.old` with no ready staging: roll back
    os.replace(root, old)
    recover(root)
    assert _load(root).num_episodes == 1
    assert not old.exists()


def _report(root: Path) -> dict | None:
    try:
        return json.loads((root / "collect_report.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _interrupt_after_commit(root: Path, n: int, sig: int, min_saved: int, log: Path) -> int:
    """Run vla-collect in a subprocess, send ``sig`` once ``min_saved`` episodes are committed."""
    cmd = [
        sys.executable,
        "-m",
        "sim.scripts.collect",
        f"--suite={SUITE}",
        f"--tasks=[{TASK}]",
        f"--episodes-per-task={n}",
        f"--root={root}",
        "--repo_id=test/demos",
        "--commit_every=1",
        "--vcodec=h264",
        "--render.image_size=64",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 180
        try:
            while time.time() < deadline:
                rep = _report(root)
                if rep is not None and rep["saved_episodes"] >= min_saved:
                    break
                if proc.poll() is not None:
                    pytest.fail(f"collection exited early ({proc.returncode}): {log.read_text()[-2000:]}")
                time.sleep(0.05)
            else:
                pytest.fail("no commit within 180 s")
            time.sleep(0.3)  # land somewhere inside the next episode or commit
        finally:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return proc.returncode


def test_resume_after_sigint_and_sigkill(tmp_path):
    """Interrupt a collection (Ctrl-C, then SIGKILL): what is on disk always loads; rerunning completes
    it without duplicates."""
    from sim.collect import collect, recover

    root = tmp_path / "ds"
    n = 5
    # Ctrl-C: exits non-zero and keeps what it recorded
    rc = _interrupt_after_commit(root, n, signal.SIGINT, 1, tmp_path / "int.log")
    assert rc != 0
    recover(root)
    rep = _report(root)
    assert rep is not None
    assert not rep["complete"]
    assert _load(root).num_episodes == rep["saved_episodes"] >= 1
    first = rep["saved_episodes"]

    # SIGKILL of the resumed run, after it committed at least one more episode
    rc = _interrupt_after_commit(root, n, signal.SIGKILL, first + 1, tmp_path / "kill.log")
    assert rc == -signal.SIGKILL

    # what the killed run left at root loads, and agrees with its report
    recover(root)
    rep = _report(root)
    assert rep is not None
    assert not rep["complete"]
    assert 1 <= rep["saved_episodes"] < n
    assert _load(root).num_episodes == rep["saved_episodes"]

    final = collect(_cfg(root, episodes_per_task=n))
    assert final["complete"]
    assert final["saved_episodes"] == n
    assert sorted(a["init_state"] for a in final["attempts"]) == list(range(n))
    assert [a["episode_index"] for a in final["attempts"]] == list(range(n))
    ds = _load(root)
    assert ds.num_episodes == n
    lengths = [int(ds.meta.episodes[i]["length"]) for i in range(n)]
    assert lengths == [a["steps"] for a in final["attempts"]]
    # every episode's frames decode (the resumed files included)
    for i in range(n):
        start = int(ds.meta.episodes[i]["dataset_from_index"])
        item = ds[start]
        assert int(item["episode_index"]) == i
        assert item["observation.images.wrist"].shape == (3, 64, 64)


def test_dart_labels_record_the_clean_action(task_env):
    """action_label=expert: the arm moves with the noise, the dataset keeps the policy's own action."""
    from sim.policies import ChunkExecutor, make_policy
    from sim.run_eval import run_episode

    env = task_env(SUITE, TASK)

    def episode(noise: float, clean: bool):
        ex = ChunkExecutor(make_policy("random:3"))
        return run_episode(
            env, ex, 0, seed=5, max_steps=8, record=True, action_noise=noise, record_clean_action=clean
        )

    plain = episode(0.0, False)
    noisy = episode(0.2, False)
    dart = episode(0.2, True)
    acts = lambda ep: np.stack([a for _, a in ep.frames])  # noqa: E731
    states = lambda ep: np.stack([o["observation.state"] for o, _ in ep.frames])  # noqa: E731
    np.testing.assert_array_equal(acts(dart), acts(plain))  # labels: the policy's actions
    assert np.abs(acts(noisy) - acts(plain)).max() > 0.05  # executed labels carry the noise
    np.testing.assert_array_equal(states(dart), states(noisy))  # same noisy rollout either way
    assert np.abs(states(dart) - states(plain)).max() > 1e-4
    with pytest.raises(ValueError, match="action_label"):
        _cfg(Path("/tmp/x"), action_label="noisy")


def test_ctrl_c_sets_a_flag_then_interrupts():
    """First SIGINT: a flag the job loop reads between episodes; second: KeyboardInterrupt; then restored."""
    from sim.collect import _graceful_ctrl_c

    before = signal.getsignal(signal.SIGINT)
    with _graceful_ctrl_c() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs at the next bytecode boundary
        assert stop.is_set()

        def second_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

        with pytest.raises(KeyboardInterrupt):
            second_ctrl_c()
    assert signal.getsignal(signal.SIGINT) is before
