"""Training data from a LeRobotDataset: delta timestamps for the subgoal frame and the action chunk.

For a policy with chunk ``h`` and subgoal offset ``k`` at ``fps``, each sample carries
``action`` at ``t, t+1/fps, ..., t+(h-1)/fps`` (with ``action_is_pad`` past the episode end) and the
agentview frame at ``t`` and ``t + k/fps`` (LeRobot clamps the latter to the last frame of the
episode, which is the natural subgoal at the end of a demo).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vla.configs import CotVlaConfig
from vla.constants import ACTION, ACTION_IS_PAD, OBS_AGENTVIEW, OBS_STATE, SUBGOAL_IMAGE, TARGET_POS, TASK
from vla.normalize import NormStats


@dataclass
class DatasetConfig:
    """Where the demonstrations are.

    Args:
        repo_id: LeRobot dataset id (a hub id for online users; any name for a local folder).
        root: local dataset folder (what ``vla-collect`` wrote); ``None`` = the LeRobot cache / hub.
        episodes: subset of episode indices; ``None`` = all.
        video_backend: LeRobot video decoder (``torchcodec`` or ``pyav``); ``None`` = LeRobot's default.
        preload: decode every frame once (one sequential pass per episode and camera, resized to the
            policy's sizes) and build the same windows in memory (:class:`PreloadedWindows`). Random
            access into AV1 videos costs a seek per sample; this is much faster on small datasets.
        windows: a folder written by ``vla-export-windows`` (:mod:`vla.windows`): the same demos as
            arrays plus one video per camera, read without LeRobot (for machines that lack it).
            Overrides ``repo_id``/``root``; implies ``preload``.
    """

    repo_id: str = "local/embedded_goal"
    root: str | None = None
    episodes: list[int] | None = None
    video_backend: str | None = None
    preload: bool = False
    windows: str | None = None

    def __post_init__(self) -> None:
        if self.windows is not None and not Path(self.windows).is_dir():
            raise ValueError(
                f"dataset.windows {self.windows!r} is not a folder; write one with "
                "`vla-export-windows --root=<LeRobotDataset> --out=<folder>`"
            )
        if self.root is not None and not Path(self.root).is_dir():
            raise ValueError(
                f"dataset.root {self.root!r} is not a folder; point it at a LeRobotDataset "
                "(e.g. the --root of vla-collect)"
            )


def delta_timestamps(policy: CotVlaConfig, fps: int) -> dict[str, list[float]]:
    """LeRobot delta timestamps for the action chunk and (with CoT) the subgoal frame."""
    out = {ACTION: [i / fps for i in range(policy.chunk_size)]}
    if policy.use_cot:
        out[OBS_AGENTVIEW] = [0.0, policy.subgoal_offset / fps]
    return out


def _open_windows(cfg: DatasetConfig, policy: CotVlaConfig | None) -> Any:
    from vla.windows import load_windows

    w = load_windows(cfg.windows)
    if cfg.episodes is not None:
        keep = torch.isin(w.episode_index, torch.as_tensor(cfg.episodes, dtype=torch.int64))
        w = dataclasses.replace(
            w,
            frames={k: v[keep] for k, v in w.frames.items()},
            actions=w.actions[keep],
            states=w.states[keep],
            episode_index=w.episode_index[keep],
            task_index=w.task_index[keep],
            target_pos=w.target_pos[keep] if w.target_pos is not None else None,
        )
    if policy is None:
        return w
    missing = [k for k in policy.camera_keys if k not in w.frames]
    if missing:
        raise ValueError(f"windows folder {cfg.windows} lacks cameras {missing}; it has {list(w.frames)}")
    if w.fps != policy.control_hz:
        raise ValueError(
            f"dataset fps {w.fps} differs from policy.control_hz {policy.control_hz}; set "
            "--policy.control_hz to the dataset's rate"
        )
    return PreloadedWindows.from_windows(w, policy)


def make_dataset(cfg: DatasetConfig, policy: CotVlaConfig | None = None) -> Any:
    """Open the LeRobotDataset (or windows folder); with ``policy``, windows follow its chunk and subgoal k.

    Without ``policy`` a windows folder comes back as :class:`vla.windows.Windows`.
    """
    if cfg.windows is not None:
        return _open_windows(cfg, policy)
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata(cfg.repo_id, root=cfg.root)
    missing = [
        k
        for k in (OBS_STATE, ACTION, *(policy.camera_keys if policy else [OBS_AGENTVIEW]))
        if k not in meta.features
    ]
    if missing:
        raise ValueError(
            f"dataset {cfg.root or cfg.repo_id} lacks features {missing}; it has {list(meta.features)}"
        )
    if policy is not None and round(meta.fps) != policy.control_hz:
        raise ValueError(
            f"dataset fps {meta.fps} differs from policy.control_hz {policy.control_hz}; set "
            "--policy.control_hz to the dataset's rate"
        )
    dts = delta_timestamps(policy, round(meta.fps)) if policy is not None else None
    kw: dict[str, Any] = {"root": cfg.root, "episodes": cfg.episodes, "delta_timestamps": dts}
    if cfg.video_backend:
        kw["video_backend"] = cfg.video_backend
    ds = LeRobotDataset(cfg.repo_id, **kw)
    if cfg.preload and policy is not None:
        return PreloadedWindows(ds, policy)
    return ds


def load_frames(ds: Any, key: str, size: int | None = None) -> Tensor:
    """Every frame of camera ``key`` in dataset order, uint8 `(N, 3, S, S)` (resized to ``size`` if given).

    Videos are decoded with one call per episode (one seek, then sequential decoding).
    """
    from lerobot.datasets.video_utils import decode_video_frames

    hf = ds.hf_dataset.with_format("numpy")
    ep_index = np.asarray(hf["episode_index"])
    out: list[Tensor] = []
    if key in ds.meta.video_keys:
        stamps = np.asarray(hf["timestamp"], dtype=np.float64)
        starts = np.flatnonzero(np.r_[True, ep_index[1:] != ep_index[:-1]])
        ends = np.r_[starts[1:], len(ep_index)]
        for s, e in zip(starts, ends, strict=True):
            ep = int(ep_index[s])
            offset = ds.meta.episodes[ep][f"videos/{key}/from_timestamp"]
            path = ds.root / ds.meta.get_video_file_path(ep, key)
            frames = decode_video_frames(
                path, [offset + float(t) for t in stamps[s:e]], ds.tolerance_s, ds.video_backend
            )
            out.append(_to_uint8(frames, size))
    else:
        for i in range(len(ep_index)):
            out.append(_to_uint8(ds.hf_dataset[i][key][None], size))
    return torch.cat(out)


def _to_uint8(frames: Tensor, size: int | None) -> Tensor:
    if size is not None and frames.shape[-2:] != (size, size):
        frames = F.interpolate(
            frames.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8)


class PreloadedWindows(torch.utils.data.Dataset):
    """The windows of :func:`delta_timestamps`, built from frames decoded once into memory.

    Same items as the LeRobotDataset with delta timestamps (indices clamped to the episode, ``*_is_pad``
    past its end), with camera frames resized to ``max(vision size, tokenizer size)``. Windows built from
    a windows folder with ``target_pos`` carry it too (``target_pos`` is ``None`` otherwise).
    """

    def __init__(self, ds: Any, policy: CotVlaConfig) -> None:
        hf = ds.hf_dataset.with_format("numpy")
        tasks = ds.meta.tasks
        by_index = {int(i): t for t, i in zip(tasks.index, tasks["task_index"], strict=True)}
        size = max(policy.image_size, policy.tokenizer.image_size)
        self._setup(
            policy,
            ep_index=np.asarray(hf["episode_index"]),
            actions=torch.from_numpy(np.stack(list(hf[ACTION])).astype(np.float32)),
            states=torch.from_numpy(np.stack(list(hf[OBS_STATE])).astype(np.float32)),
            tasks=[by_index[int(i)] for i in np.asarray(hf["task_index"])],
            frames={k: load_frames(ds, k, size) for k in policy.camera_keys},
        )

    @classmethod
    def from_windows(cls, w: Any, policy: CotVlaConfig) -> PreloadedWindows:
        """The same windows from a :class:`vla.windows.Windows` (frames resized to the policy's size)."""
        from vla.windows import resize_uint8

        size = max(policy.image_size, policy.tokenizer.image_size)
        self = cls.__new__(cls)
        self._setup(
            policy,
            ep_index=w.episode_index.numpy(),
            actions=w.actions.float(),
            states=w.states.float(),
            tasks=[w.tasks[int(i)] for i in w.task_index.tolist()],
            frames={k: resize_uint8(w.frames[k], size) for k in policy.camera_keys},
            target_pos=w.target_pos.float() if w.target_pos is not None else None,
        )
        return self

    def _setup(
        self,
        policy: CotVlaConfig,
        ep_index: np.ndarray,
        actions: Tensor,
        states: Tensor,
        tasks: list[str],
        frames: dict[str, Tensor],
        target_pos: Tensor | None = None,
    ) -> None:
        self.policy = policy
        self.ep_index = np.asarray(ep_index)
        starts = np.flatnonzero(np.r_[True, self.ep_index[1:] != self.ep_index[:-1]])
        ends = np.r_[starts[1:], len(self.ep_index)]
        self.ep_start = np.repeat(starts, ends - starts)
        self.ep_end = np.repeat(ends, ends - starts)
        self.actions, self.states, self.tasks, self.frames = actions, states, tasks, frames
        self.target_pos = target_pos  # (N, 3) or None

    def __len__(self) -> int:
        return len(self.ep_index)

    def to(self, device: torch.device | str) -> PreloadedWindows:
        """Move frames (kept uint8), actions, states and episode bounds to ``device``; returns ``self``.

        With everything on the GPU, :meth:`batches` gathers a whole batch with a few indexing kernels:
        no DataLoader workers, no host-to-device copies (49k frames of two 64 px cameras are 1.2 GB).
        """
        self.frames = {k: v.to(device) for k, v in self.frames.items()}
        self.actions, self.states = self.actions.to(device), self.states.to(device)
        if self.target_pos is not None:
            self.target_pos = self.target_pos.to(device)
        self._bounds = (
            torch.as_tensor(self.ep_start, device=device),
            torch.as_tensor(self.ep_end, device=device),
        )
        return self

    def collate(self, idx: Tensor) -> dict[str, Any]:
        """The batch of samples ``idx``, equal to the default collation of ``[self[i] for i in idx]``."""
        cfg = self.policy
        dev = self.actions.device
        ends = self._bounds[1] if hasattr(self, "_bounds") else torch.as_tensor(self.ep_end)
        idx = idx.to(dev)
        e = ends.to(dev)[idx]
        steps = idx[:, None] + torch.arange(cfg.chunk_size, device=dev)
        batch: dict[str, Any] = {
            OBS_STATE: self.states[idx],
            ACTION: self.actions[torch.minimum(steps, e[:, None] - 1)],
            ACTION_IS_PAD: steps >= e[:, None],
            TASK: [self.tasks[i] for i in idx.tolist()],
        }
        if self.target_pos is not None:
            batch[TARGET_POS] = self.target_pos[idx]
        for key, frames in self.frames.items():
            batch[key] = frames[idx].float() / 255
        if cfg.use_cot:
            j = torch.minimum(idx + cfg.subgoal_offset, e - 1)
            agent = self.frames[OBS_AGENTVIEW]
            batch[OBS_AGENTVIEW] = torch.stack([agent[idx], agent[j]], dim=1).float() / 255
        return batch

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Any:
        """Shuffled batches forever, gathered where the data lives (see :meth:`to`).

        A new permutation each epoch and the last partial batch dropped, like the shuffling DataLoader
        of ``vla-train`` (``drop_last`` unless the whole dataset is smaller than one batch, which then
        comes as one batch).
        """
        n = len(self)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        bs = min(batch_size, n)
        while True:
            perm = torch.randperm(n, generator=generator)
            for k in range(n // bs):
                yield self.collate(perm[k * bs : (k + 1) * bs])

    def __getitem__(self, i: int) -> dict[str, Any]:
        cfg = self.policy
        s, e = int(self.ep_start[i]), int(self.ep_end[i])
        steps = np.arange(i, i + cfg.chunk_size)
        item: dict[str, Any] = {
            OBS_STATE: self.states[i],
            ACTION: self.actions[np.clip(steps, s, e - 1)],
            ACTION_IS_PAD: torch.from_numpy(steps >= e),
            TASK: self.tasks[i],
        }
        if self.target_pos is not None:
            item[TARGET_POS] = self.target_pos[i]
        for key, frames in self.frames.items():
            item[key] = frames[i].float() / 255
        if cfg.use_cot:
            j = min(i + cfg.subgoal_offset, e - 1)
            item[OBS_AGENTVIEW] = (
                torch.stack([self.frames[OBS_AGENTVIEW][i], self.frames[OBS_AGENTVIEW][j]]).float() / 255
            )
        return item


def compute_norm_stats(dataset: Any) -> NormStats:
    """q01/q99 of actions and mean/std of states (and of ``target_pos`` where present) over the frames."""
    if isinstance(getattr(dataset, "actions", None), Tensor):  # PreloadedWindows or vla.windows.Windows
        target = getattr(dataset, "target_pos", None)
        return NormStats.from_arrays(
            dataset.actions.cpu().numpy(),
            dataset.states.cpu().numpy(),
            target.cpu().numpy() if target is not None else None,
        )
    hf = dataset.hf_dataset.with_format("numpy")
    actions = np.stack(list(hf[ACTION])).astype(np.float64)
    states = np.stack(list(hf[OBS_STATE])).astype(np.float64)
    return NormStats.from_arrays(actions, states)


def to_policy_batch(raw: dict[str, Any], policy: CotVlaConfig, device: torch.device | str) -> dict[str, Any]:
    """Turn a collated LeRobot batch into the policy batch (current and subgoal frames split, on device)."""
    batch: dict[str, Any] = {TASK: list(raw[TASK])}
    for key in policy.camera_keys:
        img = raw[key]
        if key == OBS_AGENTVIEW and policy.use_cot:
            if img.dim() != 5 or img.shape[1] != 2:
                raise ValueError(f"expected {key} with 2 timestamps (now, subgoal), got {tuple(img.shape)}")
            batch[SUBGOAL_IMAGE] = img[:, 1].to(device, non_blocking=True)
            img = img[:, 0]
        batch[key] = img.to(device, non_blocking=True)
    batch[OBS_STATE] = raw[OBS_STATE].to(device, non_blocking=True)
    batch[ACTION] = raw[ACTION].to(device, non_blocking=True)
    batch[ACTION_IS_PAD] = raw.get(ACTION_IS_PAD, torch.zeros(batch[ACTION].shape[:2], dtype=torch.bool)).to(
        device
    )
    if TARGET_POS in raw:
        batch[TARGET_POS] = raw[TARGET_POS].to(device, non_blocking=True)
    return batch


def make_synthetic_dataset(
    root: str | Path,
    *,
    n_episodes: int = 2,
    length: int = 16,
    image_size: int = 32,
    fps: int = 20,
    seed: int = 0,
    repo_id: str = "local/synthetic",
    videos: bool = False,
) -> Path:
    """Write a small LeRobotDataset of a moving square (no simulator) for tests and smoke runs.

    The square's position is the first two state dimensions; the action's first two dimensions move it,
    so frames, states and actions are consistent (a policy can learn the mapping).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    img = {
        "dtype": "video" if videos else "image",
        "shape": (image_size, image_size, 3),
        "names": ["height", "width", "channels"],
    }
    features = {
        OBS_AGENTVIEW: dict(img),
        "observation.images.wrist": dict(img),
        OBS_STATE: {"dtype": "float32", "shape": (8,), "names": None},
        ACTION: {"dtype": "float32", "shape": (7,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id, fps=fps, features=features, root=root, use_videos=videos)
    rng = np.random.default_rng(seed)
    tasks = ["move the square to the right", "move the square down"]
    for ep in range(n_episodes):
        pos = rng.uniform(0.2, 0.4, size=2)
        direction = np.array([1.0, 0.0]) if ep % 2 == 0 else np.array([0.0, 1.0])
        for t in range(length):
            action = np.zeros(7, np.float32)
            action[:2] = direction * (0.5 + 0.5 * np.sin(t / 3.0))
            action[6] = 1.0 if t >= length // 2 else -1.0
            frame = np.zeros((image_size, image_size, 3), np.uint8)
            px = (pos * (image_size - 6)).astype(int)
            frame[px[1] : px[1] + 6, px[0] : px[0] + 6] = (255, 60, 60) if ep % 2 == 0 else (60, 200, 255)
            wrist = np.full((image_size, image_size, 3), int(127 + 100 * action[6]), np.uint8)
            state = np.zeros(8, np.float32)
            state[:2] = pos
            state[6:] = action[6] * 0.04
            ds.add_frame(
                {
                    OBS_AGENTVIEW: frame,
                    "observation.images.wrist": wrist,
                    OBS_STATE: state,
                    ACTION: action,
                    TASK: tasks[ep % 2],
                }
            )
            pos = np.clip(pos + direction * action[:2].max() * 0.02, 0.0, 1.0)
        ds.save_episode()
    ds.finalize()
    return Path(root)
