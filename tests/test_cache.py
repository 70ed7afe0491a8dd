"""The cache folder helpers: locking, folders that appear only when complete, and cached artefacts' names."""

from __future__ import annotations

import fcntl
import hashlib
import json
import re

import pytest

from gemscope_widgets.cache import cache_dir, file_lock, key_digest, name_slug, staged_dir


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


_SAMPLE_KEY = {
    "sae": {"name": "gemma-3-270m/res layer_6 (16k) é", "weights": "9f2c", "width": 16384},
    "model": {"name": "google/gemma-3-270m", "dtype": "torch.float32", "n_layers": 18},
    "params": {"window": [16, 8], "quantile": 0.999, "scale": 1e-7, "skip": None, "bos": False},
    "format": 3,
}


def test_key_digest_matches_the_names_already_on_disk():
    """Folders written before the digest had one home must still be found: same text as the old inline code."""
    old_digest = hashlib.sha256(json.dumps(_SAMPLE_KEY, sort_keys=True).encode()).hexdigest()[:20]
    assert key_digest(_SAMPLE_KEY) == old_digest == "c0951c53545c19c968d6"
    reordered = dict(reversed(list(_SAMPLE_KEY.items())))
    assert key_digest(reordered) == old_digest
    assert key_digest({**_SAMPLE_KEY, "format": 4}) != old_digest
    name = _SAMPLE_KEY["sae"]["name"]
    old_slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[-48:].strip("_") or "sae"
    assert name_slug(name) == old_slug == "gemma-3-270m_res_layer_6_16k"
    assert name_slug("x" * 60) == "x" * 48
    assert name_slug("  ?? ") == "sae"
