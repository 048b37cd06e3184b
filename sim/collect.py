"""Expert demonstrations recorded as a LeRobotDataset (lerobot 0.4.4), resumable and crash-safe.

Layout on disk (``root`` is what `LeRobotDataset(repo_id, root=root)` loads):

- ``<root>/``: the last committed dataset. It always loads: nothing writes into it in place.
- ``<root>.staging/``: the next commit in the making: the committed dataset with ``meta/`` copied and the
  immutable ``data/`` and ``videos/`` files hard-linked (lerobot's resume appends to *new* files, never to
  old ones), plus the episodes recorded since. A commit finalizes it (parquet footers), writes the
  report, drops a ready marker, then swaps it in with two renames; `recover` finishes or rolls back a
  swap that a kill interrupted.
- ``<root>/collect_report.json``: what was asked, every attempt (task, init state, success, steps,
  episode index), saved and dropped counts per task, and one entry per run. A rerun with the same root
  skips the attempts already made, so an interrupted collection resumes where its last commit left it.

An episode is kept in memory while it runs and written only if the expert succeeds; a failed episode is
dropped (never enters the dataset's buffers) and counted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sim.eval_configs import CollectConfig
from sim.policies import ChunkExecutor, make_policy, needs_env, validate_spec
from sim.run_eval import IMAGE_KEYS, control_fps, episode_seed, resolve_tasks, run_episode, write_json_atomic

logger = logging.getLogger(__name__)

REPORT_NAME = "collect_report.json"
READY_MARKER = ".commit_ready"
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "gripper_q0", "gripper_q1"]
ACTION_NAMES = ["dx", "dy", "dz", "dax", "day", "daz", "gripper"]
# Settings that must match between runs appending to one dataset (else it would mix two collections).
_FIXED_KEYS = ("suite", "policy", "repo_id", "fps", "image_shape", "action_noise", "seed", "max_steps")


def dataset_features(image_shape: tuple[int, int, int]) -> dict[str, dict[str, Any]]:
    """LeRobot features of a demo dataset: both cameras as video, the 8-d state and the 7-d action."""
    h, w, c = image_shape
    img = {"dtype": "video", "shape": (h, w, c), "names": ["height", "width", "channels"]}
    return {
        IMAGE_KEYS[0]: dict(img),
        IMAGE_KEYS[1]: dict(img),
        "observation.state": {"dtype": "float32", "shape": (8,), "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": (7,), "names": ACTION_NAMES},
    }


def _staging(root: Path) -> Path:
    return root.with_name(root.name + ".staging")


def _old(root: Path) -> Path:
    return root.with_name(root.name + ".old")


def recover(root: str | Path) -> None:
    """Bring ``root`` back to its last commit after a kill: finish an interrupted swap or roll it back."""
    root = Path(root)
    staging, old = _staging(root), _old(root)
    if staging.exists() and (staging / READY_MARKER).exists():
        if root.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(root, old)
        os.replace(staging, root)
        (root / READY_MARKER).unlink()
    if staging.exists():  # not ready: an uncommitted batch, drop it
        shutil.rmtree(staging)
    if old.exists():
        if root.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, root)


def _link_or_copy(src: str, dst: str) -> str:
    # data/ and videos/ files are immutable once committed (lerobot resumes into new files): link them.
    if f"{os.sep}data{os.sep}" in src or f"{os.sep}videos{os.sep}" in src:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


def _promote(root: Path) -> None:
    """Swap the ready staging dir in as ``root`` (see `recover` for the crash cases)."""
    staging = _staging(root)
    (staging / READY_MARKER).touch()
    recover(root)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<root>.lock`` so two collections never write one dataset."""
    root.parent.mkdir(parents=True, exist_ok=True)
    path = root.with_name(root.name + ".lock")
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise RuntimeError(f"Another collection is writing {root} (lock {path} is held).") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_report(root: str | Path) -> dict[str, Any] | None:
    """The collection report of ``root``, or None when there is none."""
    path = Path(root) / REPORT_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


class _Collector:
    """State of one collection run: the report, the env of the current task, the open staging dataset."""

    def __init__(self, cfg: CollectConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.root)
        self.env: Any = None
        self.task: str | None = None
        self.executor: ChunkExecutor | None = None
        self.ds: Any = None
        self.pending = 0  # saved episodes not committed yet
        self.busy = False  # inside `save` or `commit`: the files are mid-write
        self.fps = 20
        self.report: dict[str, Any] = {}
        self._t0 = time.perf_counter()

    # -- env -------------------------------------------------------------------------------------
    def ensure_env(self, task: str) -> None:
        from sim.suites import make_env

        if self.task == task:
            return
        if self.env is not None:
            self.env.close()
        self.env = make_env(self.cfg.suite, task, render=self.cfg.render)
        self.env.use_init_split(resolve_init_split(self.cfg.suite, task, self.cfg.init_split))
        self.task = task
        self.fps = control_fps(self.env)
        if self.executor is None or needs_env(self.cfg.policy):
            self.executor = ChunkExecutor(make_policy(self.cfg.policy, self.env, seed=self.cfg.seed))

    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.env.observation_space[IMAGE_KEYS[0]].shape)

    # -- dataset ---------------------------------------------------------------------------------
    def open_staging(self) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        staging = _staging(self.root)
        if staging.exists():
            shutil.rmtree(staging)
        if (self.root / "meta" / "info.json").exists():
            shutil.copytree(self.root, staging, copy_function=_link_or_copy)
            self.ds = LeRobotDataset(self.cfg.repo_id, root=staging, vcodec=self.cfg.vcodec)
        else:
            self.ds = LeRobotDataset.create(
                self.cfg.repo_id,
                fps=self.fps,
                features=dataset_features(self.image_shape()),
                root=staging,
                robot_type="panda",
                use_videos=True,
                vcodec=self.cfg.vcodec,
            )

    def save(self, frames: list[tuple[dict[str, Any], np.ndarray]], instruction: str) -> int:
        """Write one successful episode into the staging dataset; return its episode index."""
        self.busy = True
        if self.ds is None:
            self.open_staging()
        index = self.ds.meta.total_episodes
        for obs, action in frames:
            self.ds.add_frame(
                {
                    IMAGE_KEYS[0]: np.asarray(obs[IMAGE_KEYS[0]], dtype=np.uint8),
                    IMAGE_KEYS[1]: np.asarray(obs[IMAGE_KEYS[1]], dtype=np.uint8),
                    "observation.state": np.asarray(obs["observation.state"], dtype=np.float32),
                    "action": np.asarray(action, dtype=np.float32),
                    "task": instruction,
                }
            )
        # Sequential encoding: a process pool per episode costs more than it saves on a few cores.
        self.ds.save_episode(parallel_encoding=False)
        self.pending += 1
        self.busy = False
        return index

    def commit(self) -> None:
        """Make everything recorded so far durable: promote the staging dataset, or just the report."""
        self.busy = True
        self._update_counts()
        if self.ds is not None:
            self.ds.finalize()
            self.ds = None
            with contextlib.suppress(OSError):  # lerobot's per-frame PNG folders, empty once encoded
                shutil.rmtree(_staging(self.root) / "images")
            write_json_atomic(_staging(self.root) / REPORT_NAME, self.report)
            _promote(self.root)
        else:
            write_json_atomic(self.root / REPORT_NAME, self.report)
        self.pending = 0
        self.busy = False

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    # -- report ----------------------------------------------------------------------------------
    def _update_counts(self) -> None:
        per_task: dict[str, dict[str, int]] = {}
        for a in self.report["attempts"]:
            t = per_task.setdefault(a["task"], {"saved": 0, "dropped": 0})
            t["saved" if a["success"] else "dropped"] += 1
        self.report["per_task"] = per_task
        self.report["saved_episodes"] = sum(t["saved"] for t in per_task.values())
        self.report["dropped_episodes"] = sum(t["dropped"] for t in per_task.values())
        run = self.report["runs"][-1]
        run["finished"] = _now()
        run["wall_s"] = round(time.perf_counter() - self._t0, 2)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def resolve_init_split(suite: str, task: str, split: str) -> str:
    """``auto`` -> ``train`` when ``suite``/``task`` has a train bank on disk, else ``eval``."""
    from sim.base import init_state_path

    if split != "auto":
        return split
    return "train" if init_state_path(suite, task, "train").exists() else "eval"


def _check_resumable(report: dict[str, Any], fixed: dict[str, Any], root: Path) -> None:
    # Collections made before init splits existed drew from the eval bank.
    report = {"init_split": "eval", "action_label": "executed", **report}
    diff = {k: (report.get(k), v) for k, v in fixed.items() if report.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: dataset has {a!r}, config asks {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{root} holds a collection made with other settings ({lines}). Resume with the same settings, "
            "choose another --root, or pass --overwrite=true to start over."
        )


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Collect (or resume collecting) demos per ``cfg``; return the collection report.

    Raises:
        ValueError: Unknown suite, task or policy, or ``root`` holds a collection with other settings.
        RuntimeError: Another collection holds the lock on ``root``.
    """
    validate_spec(cfg.policy)
    tasks = resolve_tasks(cfg.suite, cfg.tasks)
    root = Path(cfg.root)
    with _lock(root):
        if cfg.overwrite:
            for p in (root, _staging(root), _old(root)):
                if p.exists():
                    shutil.rmtree(p)
        recover(root)
        if root.exists() and any(root.iterdir()) and load_report(root) is None:
            raise ValueError(
                f"{root} exists and is not a collection made by vla-collect (no {REPORT_NAME}); choose "
                "another --root or pass --overwrite=true."
            )
        col = _Collector(cfg)
        try:
            return _collect(col, tasks)
        finally:
            col.close()


def _collect(col: _Collector, tasks: list[tuple[int, str]]) -> dict[str, Any]:
    cfg = col.cfg
    col.ensure_env(tasks[0][1])
    fixed = {
        "suite": cfg.suite,
        "policy": cfg.policy,
        "repo_id": cfg.repo_id,
        "fps": col.fps,
        "image_shape": list(col.image_shape()),
        "action_noise": cfg.action_noise,
        "seed": cfg.seed,
        "max_steps": cfg.max_steps,
        "init_split": cfg.init_split,
        "action_label": cfg.action_label,
    }
    previous = load_report(col.root)
    if previous is not None:
        _check_resumable(previous, fixed, col.root)
        col.report = previous
    else:
        col.report = {**fixed, "vcodec": cfg.vcodec, "attempts": [], "runs": []}
    col.report["requested"] = {
        "tasks": [n for _, n in tasks],
        "episodes_per_task": cfg.episodes_per_task,
        "first_init_state": cfg.first_init_state,
    }
    col.report["complete"] = False
    col.report["runs"].append({"started": _now(), "resumed": previous is not None, "attempted": 0})
    done = {(a["task"], a["init_state"]) for a in col.report["attempts"]}
    jobs = [
        (ti, name, cfg.first_init_state + i)
        for ti, name in tasks
        for i in range(cfg.episodes_per_task)
        if (name, cfg.first_init_state + i) not in done
    ]
    if done:
        logger.info("resuming %s: %d attempts done, %d to go", col.root, len(done), len(jobs))
    bar = tqdm(jobs, desc=f"collect {cfg.suite}", unit="ep", disable=None)
    try:
        with _graceful_ctrl_c() as stop:
            _run_jobs(col, bar, stop)
    except KeyboardInterrupt:
        # Ctrl-C between episodes: keep what was recorded. (Inside a save or a commit the files may be
        # half-written: leave them; the next run's `recover` finishes or drops that commit.)
        if not col.busy:
            col.commit()
            logger.warning(
                "interrupted: committed %d episodes; rerun to resume", col.report["saved_episodes"]
            )
        raise
    finally:
        bar.close()
    col.report["complete"] = True
    col.commit()
    return col.report


@contextlib.contextmanager
def _graceful_ctrl_c() -> Iterator[threading.Event]:
    """The first Ctrl-C (SIGINT) sets the yielded event: the job loop stops after the current episode.

    The second raises KeyboardInterrupt at once. A flag rather than an exception wherever the signal
    lands: an exception raised inside a library's save or encode can be lost there.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers belong to the main thread; callers in threads keep the default
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        logger.warning("Ctrl-C: stopping after this episode (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_jobs(col: _Collector, bar: Any, stop: threading.Event | None = None) -> None:
    cfg = col.cfg
    run = col.report["runs"][-1]
    for ti, name, init_state in bar:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        col.ensure_env(name)
        seed = episode_seed(cfg.seed, ti, init_state)
        ep = run_episode(
            col.env,
            col.executor,
            init_state,
            seed=seed,
            max_steps=cfg.max_steps,
            record=True,
            action_noise=cfg.action_noise,
            record_clean_action=cfg.action_label == "expert",
        )
        attempt = {
            "task": name,
            "init_state": init_state,
            "success": ep.success,
            "steps": ep.steps,
            "init_split": col.env.init_split,
        }
        if ep.success:
            attempt["episode_index"] = col.save(ep.frames, col.env.instruction)
        else:
            logger.info("dropped %s init state %d (no success in %d steps)", name, init_state, ep.steps)
        col.report["attempts"].append(attempt)
        run["attempted"] += 1
        if col.pending >= cfg.commit_every:
            col.commit()
        bar.set_postfix(
            saved=sum(a["success"] for a in col.report["attempts"]),
            dropped=sum(not a["success"] for a in col.report["attempts"]),
        )
