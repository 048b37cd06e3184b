"""vla.fileio.atomic_dir: the old folder or the new one, never a mix, never a leftover."""

import pytest

from vla.fileio import atomic_dir


def test_atomic_dir_replaces_or_keeps(tmp_path):
    dest = tmp_path / "ckpt"
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("v1")
        assert not dest.exists()  # nothing visible until the block ends
    assert (dest / "a.txt").read_text() == "v1"
    assert oct(dest.stat().st_mode & 0o777) == "0o755"
    with atomic_dir(dest) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]  # replaced whole, not merged

    def fail_midway():
        with atomic_dir(dest) as tmp:
            (tmp / "c.txt").write_text("partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fail_midway()
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]  # the old folder survives a failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or .old folder left
