"""Write-then-rename: one file (atomic_output), a set of files (output_set), Lightning checkpoints."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from vitp_geo.io.atomic import atomic_output, output_set
from vitp_geo.io.checkpoint_io import AtomicCheckpointIO


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def test_output_set_renames_only_when_every_file_is_written(tmp_path: Path) -> None:
    with output_set() as pending:
        _write(tmp_path / "a.tif", "A")
        _write(tmp_path / "a.qml", "style")
        assert not (tmp_path / "a.tif").exists() and not (tmp_path / "a.qml").exists()
        assert [final.name for _, final in pending] == ["a.tif", "a.qml"]
    assert (tmp_path / "a.tif").read_text() == "A" and (tmp_path / "a.qml").read_text() == "style"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.qml", "a.tif"]  # no temporary left


def test_a_failure_in_the_set_keeps_every_earlier_file(tmp_path: Path) -> None:
    _write(tmp_path / "a.tif", "old raster")
    _write(tmp_path / "a.qml", "old style")
    with pytest.raises(OSError, match="No space"):
        with output_set():
            _write(tmp_path / "a.tif", "new raster")
            _write(tmp_path / "a.qml", "new style")
            with atomic_output(tmp_path / "a.gpkg") as tmp:
                tmp.write_text("cut-")
                raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / "a.tif").read_text() == "old raster"
    assert (tmp_path / "a.qml").read_text() == "old style"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.qml", "a.tif"]


def test_nested_sets_commit_with_the_outer_one(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with output_set():
            with output_set():
                _write(tmp_path / "inner.txt", "x")
            assert not (tmp_path / "inner.txt").exists()  # the inner set did not commit on its own
            raise RuntimeError("later failure")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_io_never_leaves_a_cut_off_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 3, "w": torch.arange(4.0)}, path)
    saved = path.read_bytes()
    assert torch.load(path, weights_only=True)["step"] == 3
    written_in: list[Path] = []
    real_save = torch.save

    def full_disk(obj: object, f: object) -> None:
        written_in.append(Path(f.name).parent)  # type: ignore[attr-defined]
        real_save(obj, f)  # type: ignore[arg-type]
        f.truncate(100)  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 6, "w": torch.arange(8.0)}, path)
    # the temporary file was in the checkpoint's own folder (a rename, never a copy across disks)
    assert written_in == [path.parent]
    assert path.read_bytes() == saved  # the earlier checkpoint is whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
