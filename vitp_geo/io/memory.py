"""Refuse a job whose arrays cannot fit in memory before anything is allocated or written.

A window side or a volume shape comes from the user or a file header (``--tile-size 40000``, a
small ``.nii.gz`` declaring 1024³ voxels); allocating first ends in a ``MemoryError`` traceback,
or in the kernel's out-of-memory killer, after work files were started. These checks compare what
the arrays need with the memory available now (``psutil``) and name the value to change.
"""

from __future__ import annotations

import psutil

GIB = 2**30


def gib(n_bytes: float) -> str:
    """``n_bytes`` as GiB for messages (``17.9 GiB``)."""
    return f"{n_bytes / GIB:.1f} GiB"


def available_memory() -> int:
    """Bytes of memory available to a new allocation without swapping."""
    return int(psutil.virtual_memory().available)


def check_fits(need: int, what: str, hint: str) -> None:
    """Raise ``ValueError`` when ``need`` bytes exceed the memory available now.

    Args:
        need: bytes the arrays need (a lower bound: what is certain to be allocated).
        what: what needs it, named in the error (e.g. ``--tile-size 40000 with --batch-size 8``).
        hint: how to proceed (e.g. ``choose a smaller --tile-size``).
    """
    available = available_memory()
    if need > available:
        raise ValueError(
            f"{what} needs at least {gib(need)} of memory, {gib(available)} is available; {hint}"
        )
