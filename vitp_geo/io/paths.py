"""Output-path guards: an output never replaces one of the inputs or another output, and an
existing output is replaced only when the user asks (``--overwrite``): one rule for every command."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode when both exist (symlinks and hard
    links included), else the same absolute path once symlinks are resolved."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(a.resolve()) == os.path.normcase(b.resolve())


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies somewhere under it (symlinks resolved)."""
    p, f = Path(os.path.normcase(Path(path).resolve())), Path(os.path.normcase(Path(folder).resolve()))
    return p == f or f in p.parents


def check_output_paths(
    inputs: Mapping[str, str | Path | None], outputs: Mapping[str, str | Path | None]
) -> None:
    """Refuse outputs that are also inputs, lie inside an input folder, or are given twice, before
    anything is written.

    Args:
        inputs: label → path of each file or folder the job reads (``None`` entries are skipped),
            e.g. ``{"scene": ..., "--checkpoint": ...}``; labels appear in the error.
        outputs: label → path of each file the job writes.

    Raises:
        ValueError: naming both labels and the path; or an output that is a directory, or lies
            under a file.
    """
    outs = [(k, Path(v)) for k, v in outputs.items() if v is not None]
    ins = [(k, Path(v)) for k, v in inputs.items() if v is not None]
    for out_label, out in outs:  # a job must not run for hours, then fail to write its result
        if out.is_dir():
            raise ValueError(f"{out_label} {out} is a directory; give a file path (e.g. {out / 'pred.tif'})")
        blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise ValueError(f"{out_label} {out}: {blocking} is a file, not a folder")
    for i, (out_label, out) in enumerate(outs):
        for in_label, src in ins:
            if same_file(out, src):
                raise ValueError(
                    f"{out_label} {out} is the same file as the input {in_label} {src}; "
                    "refusing to overwrite an input (write the output elsewhere)"
                )
            if src.is_dir() and inside(out, src):  # e.g. metrics written over a ground-truth file
                raise ValueError(
                    f"{out_label} {out} lies inside the input folder {in_label} {src}; "
                    "refusing to write into an input (write the output elsewhere)"
                )
        for other_label, other in outs[:i]:
            if same_file(out, other):
                raise ValueError(
                    f"{other_label} and {out_label} are the same file ({out}); give each output its own path"
                )


def check_output_folder(
    label: str, folder: str | Path, inputs: Mapping[str, str | Path | Sequence[str | Path] | None]
) -> None:
    """Refuse an output folder that is, holds or lies inside one of the inputs.

    A job that replaces its output folder (``--overwrite``) must never take an input with it, and
    a folder written inside an input folder would be read as input next time.

    Args:
        label: the flag of the output folder (e.g. ``--out``), named in the error.
        folder: the output folder (it may not exist yet).
        inputs: label → path (or paths) of each file or folder the job reads; ``None`` is skipped.

    Raises:
        ValueError: naming the flag, the folder, the input's flag and its path.
    """
    for in_label, value in inputs.items():
        if value is None:
            continue
        for src in [value] if isinstance(value, str | Path) else list(value):
            if inside(src, folder):
                raise ValueError(
                    f"{label} {folder} holds the input {in_label} {src}; write the output to a folder "
                    "of its own (it is replaced as a whole with --overwrite)"
                )
            if Path(src).is_dir() and inside(folder, src):
                raise ValueError(
                    f"{label} {folder} lies inside the input folder {in_label} {src}; write the output "
                    "elsewhere"
                )


def refuse_existing_outputs(outputs: Mapping[str, str | Path | None], overwrite: bool) -> None:
    """Refuse outputs that already exist unless ``overwrite`` (the same rule for every command).

    A folder output counts as existing when it is not empty.

    Args:
        outputs: label (the flag, e.g. ``--out``) → path of each file or folder the job writes.
        overwrite: the user passed ``--overwrite``.

    Raises:
        ValueError: naming the flag and the path, and saying how to proceed.
    """
    if overwrite:
        return
    for label, value in outputs.items():
        if value is None:
            continue
        path = Path(value)
        exists = any(path.iterdir()) if path.is_dir() else path.exists()
        if exists:
            what = "exists and is not empty" if path.is_dir() else "exists"
            raise ValueError(f"{label} {path} {what}; pass --overwrite to replace it, or choose another path")
