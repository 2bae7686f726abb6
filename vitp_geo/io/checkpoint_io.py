"""Lightning checkpoints written beside their final name and renamed when complete.

Lightning's own ``TorchCheckpointIO`` writes a local checkpoint through an fsspec transaction whose
temporary file lies in the system temporary folder (``tempfile.mkstemp()``), then moves it into
place. When that folder is on another file system than the run (``/tmp`` on one disk, runs on
another: the common case on clusters) the move is a copy onto the final name, so a full disk
leaves a cut-off ``last.ckpt`` under the name ``--resume last`` trusts. ``AtomicCheckpointIO``
writes the temporary file in the checkpoint's own folder (``io.atomic.atomic_output``), syncs it and
renames it: an earlier checkpoint of that name stays whole until the new one is complete.

Remote paths (``s3://`` and other fsspec URLs) keep Lightning's behaviour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vitp_geo.io.atomic import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are write-beside-then-rename (module doc)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
