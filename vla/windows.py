"""A demonstration set as plain arrays plus one video per camera: train where LeRobot is not installed.

``vla-export-windows`` reads a LeRobotDataset once and writes a folder::

    windows.safetensors   actions (N, A) f32, states (N, S) f32, episode_index (N,), task_index (N,),
                          frame_index (N,); optional target_pos (N, 3) f32; metadata: format, version,
                          fps, tasks, cameras, image size, source dataset
    <camera key>.mp4      every frame of that camera in dataset order, resized to ``size`` (H.264,
                          4:4:4, CRF 14), one frame per row of the arrays

The folder is a few MB for a few hundred demos at 64x64, so it travels to a GPU machine that has
torch but neither LeRobot nor its video stack; :func:`load_windows` decodes it with PyAV or, where
PyAV is missing, OpenCV. ``vla-train --dataset.windows=<folder>`` then builds the same training
windows as ``--dataset.preload=true`` on the LeRobotDataset (:class:`vla.data.PreloadedWindows`).

Video frames are read by decoding each source mp4 file once, front to back, and picking the frames
whose timestamps the dataset's rows name; LeRobot's random-access decoder seeks per episode and is
about 20x slower on these small AV1 files.

``target_pos`` (optional) is an auxiliary training target per row: the world xyz of the object the
instruction names, at the start of the row's episode. The simulator knows it, LeRobot does not, so it
is added to an existing folder by ``python -m sim.targets --windows=<folder>`` (which calls
:func:`write_target_pos`); folders without it load as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vla.constants import TARGET_POS
from vla.fileio import atomic_dir, atomic_file

FORMAT = "vla-windows"
VERSION = 1
ARRAYS_FILE = "windows.safetensors"
_CRF = 14  # ~270 B per 64x64 frame; mean abs error ~1.2 grey levels, on a par with the AV1 (CRF 30) source


@dataclass
class Windows:
    """Demonstration frames and labels in dataset order (each episode's rows contiguous, in time order)."""

    frames: dict[str, Tensor]  # camera key -> uint8 (N, 3, S, S)
    actions: Tensor  # (N, A) float32
    states: Tensor  # (N, S) float32
    episode_index: Tensor  # (N,) int64
    task_index: Tensor  # (N,) int64
    tasks: list[str]  # task_index -> instruction
    fps: int
    source: str = ""
    target_pos: Tensor | None = None  # (N, 3) float32, optional (see the module docstring)

    def __len__(self) -> int:
        return len(self.actions)

    def __post_init__(self) -> None:
        n = len(self.actions)
        for name, t in (
            ("states", self.states),
            ("episode_index", self.episode_index),
            ("task_index", self.task_index),
        ):
            if len(t) != n:
                raise ValueError(f"windows: {name} has {len(t)} rows, actions has {n}")
        if self.target_pos is not None:
            _check_target_pos(self.target_pos, n)
        for key, f in self.frames.items():
            if f.dtype != torch.uint8 or f.dim() != 4 or len(f) != n:
                raise ValueError(
                    f"windows: camera {key} must be uint8 (N={n}, 3, S, S), got {f.dtype} {tuple(f.shape)}"
                )
        if n and int(self.task_index.max()) >= len(self.tasks):
            raise ValueError(
                f"windows: task_index up to {int(self.task_index.max())} but only {len(self.tasks)} tasks"
            )
        if n > 1 and bool((self.episode_index[1:] < self.episode_index[:-1]).any()):
            raise ValueError("windows: rows must be grouped by episode in increasing episode order")


# ------------------------------------------------------------------------------------------------
# Reading a LeRobotDataset
# ------------------------------------------------------------------------------------------------


def resize_uint8(frames: Tensor, size: int | None) -> Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size), bilinear with antialiasing (as vla.data does)."""
    if size is None or frames.shape[-2:] == (size, size):
        return frames
    out = []
    for part in frames.split(1024):
        x = F.interpolate(
            part.float() / 255, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(out)


def _decode_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole video file front to back: (pts seconds (F,), rgb uint8 (F, H, W, 3))."""
    import av

    times, frames = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base))
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.asarray(times), np.stack(frames)


def _video_frames(ds: Any, key: str, ep_index: np.ndarray, stamps: np.ndarray, size: int | None) -> Tensor:
    """Frames of video camera ``key`` for every row, decoding each mp4 file once."""
    starts = np.flatnonzero(np.r_[True, ep_index[1:] != ep_index[:-1]])
    ends = np.r_[starts[1:], len(ep_index)]
    by_file: dict[Path, list[tuple[int, int, float]]] = {}
    for s, e in zip(starts, ends, strict=True):
        ep = int(ep_index[s])
        path = Path(ds.root) / ds.meta.get_video_file_path(ep, key)
        by_file.setdefault(path, []).append(
            (int(s), int(e), float(ds.meta.episodes[ep][f"videos/{key}/from_timestamp"]))
        )
    out = torch.empty((len(ep_index), 3, size, size) if size else (0,), dtype=torch.uint8)
    tol = float(getattr(ds, "tolerance_s", 1e-4)) + 0.5 / float(ds.meta.fps)
    for path, spans in by_file.items():
        times, rgb = _decode_file(path)
        frames = resize_uint8(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous(), size)
        if out.dim() == 1:  # native size: allocate on the first file
            out = torch.empty((len(ep_index), *frames.shape[1:]), dtype=torch.uint8)
        for s, e, offset in spans:
            want = offset + stamps[s:e]
            idx = np.clip(np.searchsorted(times, want), 1, len(times) - 1)
            idx = np.where(np.abs(times[idx - 1] - want) <= np.abs(times[idx] - want), idx - 1, idx)
            err = np.abs(times[idx] - want)
            if (err > tol).any():
                raise ValueError(
                    f"{path}: no frame within {tol:.4f}s of timestamp {want[err.argmax()]:.4f} "
                    f"(nearest {times[idx[err.argmax()]]:.4f}); the video and the parquet rows disagree"
                )
            out[s:e] = frames[idx]
    return out


def read_lerobot(
    repo_id: str, root: str | Path | None, camera_keys: list[str] | None = None, size: int | None = 64
) -> Windows:
    """Every row of a LeRobotDataset as :class:`Windows` (cameras resized to ``size``; None keeps them)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vla.constants import ACTION, OBS_STATE
    from vla.data import load_frames

    ds = LeRobotDataset(repo_id, root=root)
    hf = ds.hf_dataset.with_format("numpy")
    ep_index = np.asarray(hf["episode_index"]).astype(np.int64)
    stamps = np.asarray(hf["timestamp"], dtype=np.float64)
    keys = camera_keys or list(ds.meta.camera_keys)
    missing = [k for k in (*keys, ACTION, OBS_STATE) if k not in ds.meta.features]
    if missing:
        raise ValueError(
            f"dataset {root or repo_id} lacks features {missing}; it has {list(ds.meta.features)}"
        )
    frames = {}
    for key in keys:
        if key in ds.meta.video_keys:
            frames[key] = _video_frames(ds, key, ep_index, stamps, size)
        else:
            frames[key] = load_frames(ds, key, size)
    tasks_df = ds.meta.tasks
    by_index = {int(i): str(t) for t, i in zip(tasks_df.index, tasks_df["task_index"], strict=True)}
    tasks = [by_index[i] for i in range(max(by_index) + 1)] if by_index else []
    return Windows(
        frames=frames,
        actions=torch.from_numpy(np.stack(list(hf[ACTION])).astype(np.float32)),
        states=torch.from_numpy(np.stack(list(hf[OBS_STATE])).astype(np.float32)),
        episode_index=torch.from_numpy(ep_index),
        task_index=torch.from_numpy(np.asarray(hf["task_index"]).astype(np.int64)),
        tasks=tasks,
        fps=round(ds.meta.fps),
        source=f"{repo_id} @ {root}" if root else repo_id,
    )


def concat_windows(parts: list[Windows]) -> Windows:
    """Several demo sets as one: episodes renumbered after each other, tasks merged by instruction."""
    if not parts:
        raise ValueError("concat_windows needs at least one Windows")
    keys = list(parts[0].frames)
    tasks: list[str] = []
    ep_off, eps, tix = 0, [], []
    for w in parts:
        if list(w.frames) != keys or w.fps != parts[0].fps:
            raise ValueError(
                f"cannot join demo sets with different cameras or rates: {keys}@{parts[0].fps} vs "
                f"{list(w.frames)}@{w.fps}"
            )
        remap = []
        for t in w.tasks:
            if t not in tasks:
                tasks.append(t)
            remap.append(tasks.index(t))
        _, ep = torch.unique_consecutive(w.episode_index, return_inverse=True)
        eps.append(ep + ep_off)
        ep_off += int(ep.max()) + 1 if len(ep) else 0
        tix.append(torch.as_tensor(remap, dtype=torch.int64)[w.task_index])
    with_target = [w.target_pos is not None for w in parts]
    if any(with_target) and not all(with_target):
        raise ValueError(f"cannot join demo sets of which only some have target_pos: {with_target}")
    return Windows(
        frames={k: torch.cat([w.frames[k] for w in parts]) for k in keys},
        actions=torch.cat([w.actions for w in parts]),
        states=torch.cat([w.states for w in parts]),
        episode_index=torch.cat(eps),
        task_index=torch.cat(tix),
        tasks=tasks,
        fps=parts[0].fps,
        source=" + ".join(w.source for w in parts),
        target_pos=torch.cat([w.target_pos for w in parts]) if all(with_target) else None,
    )


# ------------------------------------------------------------------------------------------------
# The folder on disk
# ------------------------------------------------------------------------------------------------


def _encode_video(path: Path, frames: Tensor, fps: int) -> None:
    import av

    n, _, h, w = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        stream.options = {"crf": str(_CRF), "preset": "medium"}
        rgb = frames.permute(0, 2, 3, 1).contiguous().numpy()
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb[i], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def save_windows(w: Windows, out_dir: str | Path) -> Path:
    """Write ``w`` to ``out_dir`` (built in a temp folder beside it, then renamed into place)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        cams = {}
        for i, (key, frames) in enumerate(w.frames.items()):
            fname = f"camera{i}.mp4"
            _encode_video(tmp / fname, frames, w.fps)
            cams[key] = {"file": fname, "size": int(frames.shape[-1])}
        meta = {
            "format": FORMAT,
            "version": str(VERSION),
            "fps": str(w.fps),
            "tasks": json.dumps(w.tasks),
            "cameras": json.dumps(cams),
            "num_frames": str(len(w)),
            "source": w.source,
        }
        ep = w.episode_index
        starts = torch.cat([torch.ones(1, dtype=torch.bool), ep[1:] != ep[:-1]]) if len(ep) else ep.bool()
        frame_index = (
            torch.arange(len(ep)) - torch.cummax(torch.where(starts, torch.arange(len(ep)), 0), 0).values
        )
        arrays = {
            "actions": w.actions.contiguous(),
            "states": w.states.contiguous(),
            "episode_index": ep.contiguous(),
            "task_index": w.task_index.contiguous(),
            "frame_index": frame_index.contiguous(),
        }
        if w.target_pos is not None:
            arrays[TARGET_POS] = w.target_pos.float().contiguous()
        save_file(arrays, str(tmp / ARRAYS_FILE), metadata=meta)
    return out


def _check_target_pos(target_pos: Tensor, n: int) -> None:
    if target_pos.shape != (n, 3) or not target_pos.is_floating_point():
        raise ValueError(
            f"windows: target_pos must be float (N={n}, 3), got {target_pos.dtype} {tuple(target_pos.shape)}"
        )
    if bool(torch.isinf(target_pos).any()):
        raise ValueError("windows: target_pos holds inf")
    nan = torch.isnan(target_pos)
    if not bool((nan.all(-1) | ~nan.any(-1)).all()):
        raise ValueError("windows: a target_pos row is partly NaN (a row is a target or all NaN: no target)")


def read_arrays(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The arrays and metadata of a windows folder, without decoding its videos."""
    from safetensors import safe_open

    root = Path(path)
    arrays_path = root / ARRAYS_FILE
    if not arrays_path.is_file():
        raise FileNotFoundError(
            f"{root} is not a windows folder (no {ARRAYS_FILE}); write one with "
            "`vla-export-windows --dataset.root=<LeRobotDataset> --out=<folder>`"
        )
    with safe_open(str(arrays_path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{arrays_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        if int(meta.get("version", 0)) > VERSION:
            raise ValueError(f"{arrays_path} is version {meta['version']}; this code reads up to {VERSION}")
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    return arrays, meta


def write_target_pos(path: str | Path, target_pos: Tensor | np.ndarray, note: str = "") -> Path:
    """Add (or replace) ``target_pos`` `(N, 3)` in the windows folder ``path``; the videos are untouched.

    The arrays file is rewritten through a temp file and a rename, so a reader sees the old file or the
    new one. ``note`` (how the target was made) goes into the metadata as ``target_pos``.
    """
    from safetensors.torch import save_file

    root = Path(path)
    arrays, meta = read_arrays(root)
    target = torch.as_tensor(np.asarray(target_pos, dtype=np.float32))
    _check_target_pos(target, int(meta["num_frames"]))
    arrays[TARGET_POS] = target.contiguous()
    meta = {**meta, TARGET_POS: note or "world xyz of the named object at the episode start"}
    with atomic_file(root / ARRAYS_FILE) as tmp:
        save_file(arrays, str(tmp), metadata=meta)
    return root


def _read_video(path: Path) -> np.ndarray:
    """All frames of ``path`` as rgb uint8 (F, H, W, 3): PyAV if installed, else OpenCV."""
    try:
        return _decode_file(path)[1]
    except ImportError:
        pass
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyAV (`pip install av`) or OpenCV (`pip install opencv-python-headless`)"
        ) from e
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"OpenCV could not decode {path}")
    return np.stack(frames)


def load_windows(path: str | Path) -> Windows:
    """Load a folder written by :func:`save_windows` (or ``vla-export-windows``)."""
    root = Path(path)
    arrays, meta = read_arrays(root)
    n = int(meta["num_frames"])
    frames = {}
    for key, info in json.loads(meta["cameras"]).items():
        rgb = _read_video(root / info["file"])
        if len(rgb) != n:
            raise ValueError(
                f"{root / info['file']} holds {len(rgb)} frames, the arrays {n}: the folder is damaged"
            )
        frames[key] = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
    return Windows(
        frames=frames,
        actions=arrays["actions"],
        states=arrays["states"],
        episode_index=arrays["episode_index"],
        task_index=arrays["task_index"],
        tasks=json.loads(meta["tasks"]),
        fps=int(meta["fps"]),
        source=meta.get("source", ""),
        target_pos=arrays.get(TARGET_POS),
    )


@dataclass
class ExportConfig:
    """Write a windows folder from a LeRobotDataset.

    Args:
        repo_id: LeRobot dataset id.
        root: local dataset folder (what ``vla-collect`` wrote); several folders separated by commas are
            joined (episodes renumbered in order, tasks merged by instruction).
        out: the windows folder to write.
        size: camera frames resized to ``size`` x ``size`` (the policy's largest image size).
        cameras: camera keys; empty = every camera of the dataset.
    """

    repo_id: str = "local/embedded_goal"
    root: str | None = None
    out: str = "data/windows/embedded_goal"
    size: int = 64
    cameras: list[str] | None = None


def main() -> None:
    """Console-script entry point (``vla-export-windows``)."""
    import logging
    import time

    import draccus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = draccus.parse(ExportConfig)
    t0 = time.time()
    roots = cfg.root.split(",") if cfg.root else [None]
    w = concat_windows([read_lerobot(cfg.repo_id, r, cfg.cameras or None, cfg.size) for r in roots])
    out = save_windows(w, cfg.out)
    mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    logging.info(
        "wrote %s: %d frames, %d episodes, %d tasks, %.1f MB in %.0fs",
        out,
        len(w),
        len(set(w.episode_index.tolist())),
        len(w.tasks),
        mb,
        time.time() - t0,
    )


if __name__ == "__main__":
    main()
