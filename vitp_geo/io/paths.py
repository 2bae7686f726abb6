"""Output-path guards: an output never replaces one of the inputs or another output, and an
existing output is replaced only when the user asks (``--overwrite``): one rule for every command."""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def check_output_paths(
    inputs: Mapping[str, str | Path | None], outputs: Mapping[str, str | Path | None]
) -> None:
    """Refuse outputs that are also inputs, or that are given twice, before anything is written.

    Args:
        inputs: label → path of each file the job reads (``None`` entries are skipped), e.g.
            ``{"scene": ..., "--checkpoint": ...}``; labels appear in the error.
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
        for other_label, other in outs[:i]:
            if same_file(out, other):
                raise ValueError(
                    f"{other_label} and {out_label} are the same file ({out}); give each output its own path"
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
