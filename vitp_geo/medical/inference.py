"""Slice-by-slice inference of a 2D segmentation model over a volume, written back as a label NIfTI.

``predict_volume`` is the functional core: every slice of a prepared case
(``inputs.SliceInput.prepare``) goes through the model in batches, normalised with the card's
``mean`` / ``std``, and the per-slice class ids (or logits) are put back into the RAS volume
(``slicing.put_slice``), so the result has the input's RAS shape. ``infer_case`` is the shell
behind ``vitp-geo infer CASE.nii.gz|DICOM_DIR --checkpoint model.ckpt --out pred.nii.gz``: it
reads the checkpoint's model card (``card.render["medical"]`` holds the slice rule,
``label_values`` the label value of each class id), reads the case (NIfTI, a DICOM series
folder, or for multi-sequence models the ``<case>_0000`` file whose ``_0001 …`` siblings are
found next to it), predicts, maps class ids back to the dataset's label values (BraTS class 3 →
label 4) and writes the labels in the input's own voxel order, affine, qform and sform
(``volume.save_nifti_like``, atomically).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from vitp_geo.evaluation.dice import SegClass, confusion_matrix, dice_report
from vitp_geo.io.volume import Volume, check_same_grid, is_nifti_path, save_nifti_like
from vitp_geo.medical.datasets import LabelTable, load_case, load_case_label, xray_label
from vitp_geo.medical.inputs import SliceInput, fill_non_finite
from vitp_geo.medical.load import load_volume
from vitp_geo.medical.slicing import put_slice
from vitp_geo.medical.xray import load_xray

Predictor = Callable[[Tensor], Tensor]  # (B, 3, H, W) normalised → (B, K, H, W) logits


def predict_volume(
    predictor: Predictor,
    prepared: np.ndarray,
    spec: SliceInput,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 8,
    logits: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Run a 2D model over every slice of a prepared case.

    Args:
        predictor: (B, 3, H, W) float32 → (B, K, H, W) logits.
        prepared: the case as ``spec.prepare`` returns it, (X, Y, Z) or (X, Y, Z, 3), RAS.
        spec: the slice rule (axis, channels).
        mean, std: per-channel normalisation applied to each (3, H, W) slice.
        batch_size: slices per model call.
        logits: return the logits instead of the class ids.
        progress: show a progress bar over slices.

    Returns:
        (X, Y, Z) int64 class ids, or (X, Y, Z, K) float32 logits when ``logits``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    shape = tuple(int(v) for v in prepared.shape[:3])
    n = spec.n_slices(prepared)
    out: np.ndarray | None = None
    for start in tqdm(range(0, n, batch_size), desc="slices", disable=not progress, unit="batch"):
        ks = list(range(start, min(n, start + batch_size)))
        x = torch.from_numpy(np.stack([spec.slice(prepared, k) for k in ks]))  # (B, 3, H, W)
        with torch.inference_mode():
            y = predictor((x - m) / s).float().cpu()  # (B, K, H, W)
        if out is None:
            out = np.zeros((*shape, y.shape[1]), np.float32) if logits else np.zeros(shape, np.int64)
        for b, k in enumerate(ks):
            if logits:
                put_slice(out, spec.axis, k, y[b].numpy())
            else:
                put_slice(out, spec.axis, k, y[b].argmax(0).numpy())
    assert out is not None  # n >= 1: an empty volume is refused by the readers
    return out


@dataclass
class MedicalModel:
    """A fine-tuned checkpoint's model and what its card says about medical inputs."""

    module: torch.nn.Module
    spec: SliceInput
    table: LabelTable
    mean: list[float]
    std: list[float]
    channel_names: tuple[str, ...]
    modality: str

    def predictor(self, device: torch.device | str = "cpu") -> Predictor:
        module = self.module.to(device).eval()

        def run(x: Tensor) -> Tensor:
            return module(x.to(device))

        return run


def load_medical_model(checkpoint: str | Path) -> MedicalModel:
    """Rebuild a medical segmentation model from ``vitp-geo finetune``'s ``model.ckpt``.

    Raises:
        ValueError: not a segmentation checkpoint, or trained on non-medical data (no slice rule).
    """
    from vitp_geo.tasks.loading import load_inference_model

    module, card = load_inference_model(Path(checkpoint))
    render: dict[str, Any] = dict(card.render)
    if card.task != "segmentation" or "medical" not in render:
        raise ValueError(
            f"{checkpoint}: not a medical segmentation model (task {card.task!r}, no slice rule in its "
            "model card); fine-tune one with `vitp-geo finetune segmentation --domain med` or a "
            "configs/finetune/medical/*.yaml config"
        )
    values = render.get("label_values") or list(range(len(card.class_names)))
    return MedicalModel(
        module=module,
        spec=SliceInput.from_dict(render["medical"]),
        table=LabelTable(tuple(card.class_names), tuple(int(v) for v in values)),
        mean=list(card.mean),
        std=list(card.std),
        channel_names=tuple(render.get("channel_names") or ("CT",)),
        modality=str(render.get("modality", "CT")),
    )


_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})(?P<ext>\.nii(\.gz)?)$", re.I)


def read_case_channels(path: str | Path, n_channels: int) -> list[Volume]:
    """The channel volumes of one case for a model that reads ``n_channels``.

    One channel: ``path`` (NIfTI file, DICOM file or DICOM series folder). Several: a 4-D NIfTI
    with that many channels on the last axis, or ``<case>_0000.nii.gz`` with its ``_0001 …``
    siblings in the same folder (nnU-Net naming). Every channel must share the first's grid.

    Raises:
        FileNotFoundError: the path or a sibling channel file is missing.
        ValueError: unreadable input, wrong channel count or mismatched grids (files named).
    """
    path = Path(path)
    first = load_volume(path)
    if n_channels == 1:
        if first.array.ndim != 3:
            raise ValueError(f"{path}: the model reads one channel, the file holds shape {first.array.shape}")
        return [first]
    if first.array.ndim == 4:
        if first.array.shape[3] != n_channels:
            raise ValueError(f"{path}: {first.array.shape[3]} channels, the model reads {n_channels}")
        return [
            Volume(
                first.array[..., c],
                first.affine,
                first.source_affine,
                first.source_axcodes,
                first.spacing,
                first.modality,
                first.path,
                first.header,
            )
            for c in range(n_channels)
        ]
    m = _CHANNEL_FILE.match(path.name)
    if not m or int(m["ch"]) != 0:
        raise ValueError(
            f"{path}: the model reads {n_channels} MRI sequences; pass <case>_0000.nii.gz (its _0001 … "
            "siblings are read from the same folder) or a 4-D NIfTI"
        )
    vols = [first]
    for c in range(1, n_channels):
        sibling = path.with_name(f"{m['case']}_{c:04d}{m['ext']}")
        if not sibling.is_file():
            raise FileNotFoundError(f"channel {c} of {path.name} not found: {sibling}")
        vol = load_volume(sibling)
        check_same_grid(first, vol)
        vols.append(vol)
    return vols


def infer_case(
    checkpoint: str | Path,
    case: str | Path,
    out: str | Path,
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Predict one case and write its label NIfTI (module doc); returns ``out``.

    Raises:
        FileNotFoundError, ValueError: bad checkpoint, input or output path (nothing is written).
    """
    out = Path(out)
    if not is_nifti_path(out):
        raise ValueError(f"--out must end in .nii or .nii.gz for a medical volume, got {out}")
    model = load_medical_model(checkpoint)
    channels = read_case_channels(case, len(model.channel_names))
    background = f"{model.table.names[0]} (label {model.table.values[0]})"
    arrays, nodata = fill_non_finite(
        [v.array for v in channels], case, f" and labelled {background} in the prediction"
    )
    prepared = model.spec.prepare(arrays, model.channel_names)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ids = predict_volume(
        model.predictor(device),
        prepared,
        model.spec,
        model.mean,
        model.std,
        batch_size=batch_size,
        progress=progress,
    )
    if nodata is not None:
        ids[nodata] = 0  # nodata voxels: class 0, the background
    return save_nifti_like(model.table.to_values(ids), channels[0], out)


def score_cases(
    predictor: Predictor,
    cases: Sequence[Any],
    channel_names: Sequence[str],
    table: LabelTable,
    spec: SliceInput,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    rule: str = "ignore",
    batch_size: int = 8,
) -> Any:
    """Per-case Dice of a model on whole volumes (every slice, not only the kept ones).

    Args:
        predictor: (B, 3, H, W) → (B, K, H, W) logits.
        cases: ``medical.datasets.MSDCase`` with labels.
        channel_names, table, spec, mean, std: as the model was trained.
        rule: the empty-ground-truth rule (``vitp_geo.evaluation.dice.EmptyRule``; default
            ``ignore``, nnU-Net's: a class absent from both prediction and ground truth is left out).

    Returns:
        A ``vitp_geo.evaluation.dice.DiceReport`` over the foreground classes (label values).
    """

    confusions = []
    for case in cases:
        prepared, ref = load_case(case, spec, channel_names)
        gt = load_case_label(case, ref, table)
        pred = predict_volume(predictor, prepared, spec, mean, std, batch_size=batch_size)
        confusions.append((case.case_id, confusion_matrix(table.to_values(pred), table.to_values(gt))))
    classes = [SegClass(n, (v,)) for n, v in zip(table.names, table.values, strict=True) if v != 0]
    return dice_report(confusions, classes, rule, background=SegClass(table.names[0], (table.values[0],)))


def score_radiographs(
    predictor: Predictor,
    items: Sequence[Any],
    table: LabelTable,
    spec: SliceInput,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    rule: str = "ignore",
) -> Any:
    """Per-image Dice of a model on radiographs (``medical.datasets.XrayItem``; each image is a case).

    Returns:
        A ``vitp_geo.evaluation.dice.DiceReport`` over the foreground classes.
    """

    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    confusions = []
    for item in items:
        xr = load_xray(item.image)
        x = torch.from_numpy(spec.image_2d(xr.array))[None]  # (1, 3, H, W)
        with torch.inference_mode():
            pred = predictor((x - m) / s).float().cpu()[0].argmax(0).numpy()
        gt = xray_label(item, xr.shape)
        name = f"{item.category}/{item.image.stem}" if item.category else item.image.stem
        confusions.append((name, confusion_matrix(table.to_values(pred), table.to_values(gt))))
    classes = [SegClass(n, (v,)) for n, v in zip(table.names, table.values, strict=True) if v != 0]
    return dice_report(confusions, classes, rule, background=SegClass(table.names[0], (table.values[0],)))
