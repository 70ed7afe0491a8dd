"""The cache folder helpers: locking and folders that appear only when complete."""

from __future__ import annotations

import fcntl

import pytest

from gemscope_widgets.cache import cache_dir, file_lock, staged_dir


def test_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "c"))
    assert cache_dir("models") == tmp_path / "c" / "models"
    assert (tmp_path / "c" / "models").is_dir()


def test_staged_dir_publishes_only_complete_folders(tmp_path):
    target = tmp_path / "sae"
    with pytest.raises(RuntimeError), staged_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with staged_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").read_text() == "{}"


def _lock_is_held(path) -> bool:
    """Probe with a non-blocking flock on a fresh open file: it fails exactly while another holder has it."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_file_lock_excludes_a_second_holder_and_is_released_on_every_exit(tmp_path):
    lock = tmp_path / "sub" / "x.lock"
    with file_lock(lock):
        assert lock.is_file()
        assert _lock_is_held(lock)
    assert not _lock_is_held(lock)
    with pytest.raises(RuntimeError), file_lock(lock):
        assert _lock_is_held(lock)
        raise RuntimeError("failed while holding the lock")
    assert not _lock_is_held(lock)
