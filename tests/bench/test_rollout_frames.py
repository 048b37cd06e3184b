"""bench.rollout_frames: the right frames of a real mp4, a PNG grid, clear errors."""

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from bench.rollout_frames import read_frames, rollout_frames


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "init000_fail.mp4"
    with imageio.get_writer(path, fps=20, codec="libx264", macro_block_size=2, quality=8) as w:
        for i in range(30):  # frame i is flat grey 8 * i: which frame came back is readable after coding
            w.append_data(np.full((32, 96, 3), 8 * i, np.uint8))
    return path


def test_reads_the_asked_steps(video):
    frames = read_frames(video, [0, 5, 29])
    assert [round(float(f.mean()) / 8) for f in frames] == [0, 5, 29]
    assert frames[0].shape == (32, 96, 3)


def test_grid_png(video, tmp_path):
    out = rollout_frames([video, video], [0, 10, 20], tmp_path / "sub" / "grid.png", title="t")
    img = Image.open(out)
    assert img.format == "PNG"
    assert img.width > img.height  # two columns of 3:1 frames, three rows
    assert not list(out.parent.glob("*.tmp*"))


def test_errors(video, tmp_path):
    with pytest.raises(ValueError, match="30 frames"):
        read_frames(video, [0, 30])
    with pytest.raises(FileNotFoundError, match="no video"):
        read_frames(tmp_path / "missing.mp4", [0])
    with pytest.raises(ValueError, match="at least one"):
        rollout_frames([], [0], tmp_path / "x.png")
