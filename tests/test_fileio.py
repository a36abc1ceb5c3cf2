"""Atomic writes: all or nothing, and the mode an ordinary ``open()`` / ``mkdir()`` gives under the umask
(``tempfile`` alone would leave 0600 files and 0700 folders that no other user can read)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from videoalign_ray.runtime.fileio import atomic_dir, atomic_path, current_umask, write_text_atomic


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_and_folders_get_the_mode_of_the_umask(tmp_path, umask):
    assert current_umask() == umask
    write_text_atomic(tmp_path / "summary.json", "{}")
    with atomic_path(tmp_path / "cache.bin", fsync=False) as tmp:
        import torch
        from safetensors.torch import save_file

        save_file({"value": torch.zeros(2)}, str(tmp))  # safetensors writes its files 0600
    with atomic_dir(tmp_path / "final") as tmp:
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "w.safetensors").write_bytes(b"w")
        # a library writing through a private temporary file (diffusers' LoRA export does) leaves 0600
        os.close(os.open(tmp / "pytorch_lora_weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))
    plain_file, plain_dir = tmp_path / "plain.txt", tmp_path / "plain"
    plain_file.write_text("")
    plain_dir.mkdir()
    assert _mode(tmp_path / "summary.json") == _mode(tmp_path / "cache.bin") == _mode(plain_file) == 0o666 & ~umask
    assert _mode(tmp_path / "final") == _mode(tmp_path / "final" / "adapter") == _mode(plain_dir) == 0o777 & ~umask
    assert _mode(tmp_path / "final" / "adapter" / "w.safetensors") == 0o666 & ~umask
    assert _mode(tmp_path / "final" / "pytorch_lora_weights.safetensors") == 0o666 & ~umask
    if umask == 0o022:  # the case: another user reads the adapter
        assert _mode(tmp_path / "final") & stat.S_IROTH and _mode(tmp_path / "summary.json") & stat.S_IROTH


def test_a_failed_write_leaves_the_previous_version_and_no_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "final") as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_the_tiny_base_folder_follows_the_umask(tmp_path, umask):
    from videoalign_ray.flow.model import materialize_tiny_base

    base = materialize_tiny_base(tmp_path / "base_model")
    assert _mode(base) == 0o777 & ~umask
