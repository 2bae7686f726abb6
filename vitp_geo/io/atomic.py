"""Write-then-rename, so that no half-written output ever carries its final name.

``atomic_output`` covers one file. ``output_set`` covers the several files one command writes
together (``vitp-geo infer``'s class map, its ``.aux.xml`` and ``.qml``, the probabilities, the
GeoPackage and its style): inside it, every ``atomic_output`` writes its temporary file as usual
but the renames wait until the whole set is written. If any of them fails (a full disk while the
GeoPackage is written), every temporary file of the set is removed and no final name is touched:
the outputs appear all together or not at all.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

# The (temporary, final) renames of the output set being written, if any.
_PENDING: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("vitp_geo_output_set", default=None)


def partial_path(path: str | Path) -> Path:
    """The temporary name used while ``path`` is being written (same folder, same suffix)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{path.suffix}")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on error remove it.

    Works for files and for directories (for a directory, the temporary path is created by the
    caller).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    pending = _PENDING.get()
    if pending is not None:
        pending.append((tmp, path))  # renamed when the whole output set is written
        return
    _replace(tmp, path)


@contextmanager
def output_set() -> Iterator[list[tuple[Path, Path]]]:
    """Files written with ``atomic_output`` inside this block get their final names together.

    On success every temporary file is renamed to its final name, in the order written. On any
    error the temporary files are removed and the final names keep what they held before.
    Yields the list of pending ``(temporary, final)`` renames.
    """
    outer = _PENDING.get()
    if outer is not None:  # nested: the outer set commits
        yield outer
        return
    pending: list[tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield pending
    except BaseException:
        for tmp, _ in pending:
            _remove(tmp)
        raise
    finally:
        _PENDING.reset(token)
    for tmp, path in pending:
        _replace(tmp, path)


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and tmp.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
