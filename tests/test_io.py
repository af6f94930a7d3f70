"""Atomic writes: the target is either the old or the new content, never partial, never a leftover temp file."""

import errno
import os
import threading

import pytest

from bora_ref._io import atomic_write, fsync_directory


def test_writes_bytes_and_callables(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write(target, lambda f: f.write(b"second"))
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_file_gets_the_mode_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic_write(tmp_path / "atomic", b"x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_failure_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_failed_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_concurrent_writers_always_leave_one_complete_version(tmp_path):
    target = tmp_path / "f.bin"
    payloads = [bytes([i]) * 100_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(target, p), kwargs={"durable": False}) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_temporary_name_of_a_hidden_target_does_not_double_the_dot(tmp_path):
    seen = []
    atomic_write(tmp_path / ".pending", lambda f: seen.extend(os.listdir(tmp_path)), durable=False)
    assert len(seen) == 1 and seen[0].startswith(".pending.") and seen[0].endswith(".tmp")


@pytest.mark.parametrize(("err", "raises"), [(errno.EINVAL, False), (errno.ENOTSUP, False), (errno.EIO, True), (None, True)])
def test_directory_fsync_ignores_unsupported_and_raises_lost_writes(tmp_path, monkeypatch, err, raises):
    """EINVAL/ENOTSUP mean "directories cannot be fsynced here"; EIO (or anything else) means durability was lost."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to tell directory fds apart")
    real = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(err, "injected")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    if raises:
        with pytest.raises(OSError, match="injected"):
            fsync_directory(tmp_path)
        with pytest.raises(OSError, match="injected"):
            atomic_write(tmp_path / "f", b"new")
        assert (tmp_path / "f").read_bytes() == b"new"  # the rename happened; only its durability is in doubt
    else:
        fsync_directory(tmp_path)
        atomic_write(tmp_path / "f", b"new")
    atomic_write(tmp_path / "g", b"x", sync_directory=False)  # the caller syncs the directory itself: no error here
    assert sorted(os.listdir(tmp_path)) == ["f", "g"]
