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


def test_atomic_file_replaces_or_keeps(tmp_path):
    from vla.fileio import atomic_file

    dest = tmp_path / "arrays.bin"
    dest.write_bytes(b"old")
    with atomic_file(dest) as tmp:
        tmp.write_bytes(b"new")
        assert dest.read_bytes() == b"old"  # nothing visible until the block ends
    assert dest.read_bytes() == b"new"
    assert oct(dest.stat().st_mode & 0o777) == "0o644"

    def fail_midway():
        with atomic_file(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fail_midway()
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.bin"]  # no temp file left
