"""The cache folder helpers: locking and folders that appear only when complete."""

from __future__ import annotations

import threading
import time

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


def test_file_lock_excludes_a_second_holder(tmp_path):
    lock = tmp_path / "x.lock"
    order = []

    def second():
        with file_lock(lock):
            order.append("second")

    with file_lock(lock):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]
