"""Tiny real checkpoints, in the exact format ``vitp-geo finetune`` writes, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitp_geo.io.atomic import atomic_output


def save_tiny_checkpoint(
    path: str | Path,
    *,
    task: str = "segmentation",
    num_classes: int = 5,
    tile_size: int = 112,
    bands: Sequence[int] = (1, 2, 3),
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    neck: str = "sfp",
    head: str = "upernet",
    seed: int = 0,
    box_type: str = "obb",
    roi_head: str = "standard",
    rpn: str = "horizontal",
    render: dict[str, Any] | None = None,
) -> Path:
    """Write a real, small, untrained checkpoint in the exact format ``vitp-geo finetune`` writes.

    The backbone is ``vitp_tiny_patch14_112`` (dim 192, depth 4) with a 32-wide head; weights
    are seeded, so two calls with the same arguments give the same logits. Takes about a second.

    Args:
        path: the ``.ckpt`` to write (atomically).
        task: ``segmentation``, ``change`` (``num_classes`` is ignored, always 2) or ``detection``
            (``num_classes`` object classes; a 32-wide FPN and a 64-wide box head).
        num_classes: segmentation classes K.
        tile_size: recorded tile size (also the backbone's position-embedding grid).
        bands: 1-based raster bands, one per model channel (per date for change).
        class_names, class_colors: card entries (defaults ``class_i`` / a fixed palette).
        mean, std: per-channel statistics in 0–255 units (default 0 / 255).
        neck, head: ``sfp`` / ``adapter`` and ``upernet`` / ``unet``.
        seed: weight initialisation seed.
        box_type: ``hbb`` or ``obb`` (detection only).
        roi_head: ``standard``, ``cascade`` or ``mask`` (horizontal detection only).
        rpn: ``horizontal`` or ``oriented`` (Oriented R-CNN; oriented detection only).
        render: the card's ``render`` entry (default: the render rule), e.g. ``{"raw": True,
            "dtype": "uint8"}`` as a GeoTIFF datamodule records it.

    Returns:
        ``path``.
    """
    import lightning

    from vitp_geo.tasks.args import BackboneArgs, InputArgs
    from vitp_geo.tasks.change import ChangeDetectionTask
    from vitp_geo.tasks.detection import ObjectDetectionTask
    from vitp_geo.tasks.segmentation import SegmentationTask

    path = Path(path)
    common: dict[str, Any] = dict(
        backbone=BackboneArgs(
            name="vitp_tiny_patch14_112",
            img_size=tile_size,
            in_channels=len(bands),
            neck=neck,  # type: ignore[arg-type]
            drop_path_rate=0.0,
        ),
        head=head,
        head_channels=32,
        inputs=InputArgs(
            bands=list(bands),
            mean=list(mean) if mean is not None else None,
            std=list(std) if std is not None else None,
            render=dict(render) if render is not None else None,
        ),
        class_names=list(class_names) if class_names is not None else None,
        class_colors=[list(c) for c in class_colors] if class_colors is not None else None,
    )
    torch.manual_seed(seed)
    module: SegmentationTask | ChangeDetectionTask | ObjectDetectionTask
    if task == "detection":
        for key in ("head", "head_channels"):
            common.pop(key)
        module = ObjectDetectionTask(
            num_classes=num_classes,
            box_type=box_type,  # type: ignore[arg-type]
            roi_head=roi_head,  # type: ignore[arg-type]
            rpn=rpn,  # type: ignore[arg-type]
            fpn_channels=32,
            representation=64,
            anchor_sizes=[16, 32, 64, 128, 256],
            **common,
        )
    elif task == "segmentation":
        module = SegmentationTask(num_classes=num_classes, **common)
    elif task == "change":
        module = ChangeDetectionTask(**common)
    else:
        raise ValueError(f"task must be 'segmentation', 'change' or 'detection', got {task!r}")
    with torch.no_grad():  # non-trivial normalisation statistics, so eval-mode BN is exercised
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ckpt: dict[str, Any] = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    module.on_save_checkpoint(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(ckpt, str(tmp))
    return path


def save_tiny_segmentation_checkpoint(path: str | Path, **kwargs: Any) -> Path:
    """:func:`save_tiny_checkpoint` with ``task="segmentation"`` (same keyword arguments)."""
    return save_tiny_checkpoint(path, task="segmentation", **kwargs)
