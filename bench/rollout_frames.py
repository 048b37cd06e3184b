"""A picture of rollouts: frames of run_eval's videos at chosen steps, one column per episode.

run_eval's mp4s hold agentview | wrist | predicted subgoal side by side per step; reading a failure
off them means scrubbing through each. This lays the frames at the given steps out as one labelled
PNG (rows: steps, columns: episodes), written atomically::

    python -m bench.rollout_frames outputs/eval/videos/<task>/init00{0,1,2}_fail.mp4 \
        --steps 0,40,80,140,200,279 --out bench/notes/failure.png --title "cream cheese, CoT"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def read_frames(path: Path, steps: list[int]) -> list[np.ndarray]:
    """The frames of ``path`` at ``steps`` (HxWx3 uint8); a step past the end is an error."""
    import imageio.v3 as iio

    if not path.is_file():
        raise FileNotFoundError(f"no video {path}")
    frames = iio.imread(path)
    bad = [s for s in steps if not 0 <= s < len(frames)]
    if bad:
        raise ValueError(f"{path} has {len(frames)} frames (steps 0..{len(frames) - 1}); asked for {bad}")
    return [frames[s] for s in steps]


def rollout_frames(videos: list[Path], steps: list[int], out: Path, title: str = "") -> Path:
    """Write the frames of every video at ``steps`` as one PNG grid (rows: steps, columns: videos)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import save_figure

    if not videos or not steps:
        raise ValueError("give at least one video and one step")
    grid = [read_frames(Path(v), steps) for v in videos]
    h, w = grid[0][0].shape[:2]
    scale = 1.25 / h  # inches per pixel row: frames come out ~1.25 in (about their own size at 110 dpi)
    fig, axes = plt.subplots(
        len(steps),
        len(videos),
        figsize=(len(videos) * w * scale, len(steps) * h * scale + 0.6),
        squeeze=False,
    )
    for j, (video, frames) in enumerate(zip(videos, grid, strict=True)):
        for i, (step, frame) in enumerate(zip(steps, frames, strict=True)):
            ax = axes[i][j]
            ax.imshow(frame)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"step {step}")
            if i == 0:
                ax.set_title(Path(video).stem, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="+", help="run_eval mp4s")
    ap.add_argument("--steps", required=True, help="comma-separated frame indices, e.g. 0,40,120")
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        raise SystemExit(f"--steps: comma-separated integers, got {args.steps!r}") from None
    print(rollout_frames([Path(v) for v in args.videos], steps, Path(args.out), args.title))


if __name__ == "__main__":
    main()
