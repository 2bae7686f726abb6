"""Seeded synthetic medical phantoms: abdominal CT, brain MRI and chest radiographs.

The embedded medical defaults (``vitp-geo pretrain --domain med``, ``vitp-geo finetune
segmentation --domain med``), the medical tests and the config fixtures draw from here, and the
phantoms are written in the real on-disk layouts, so the default runs go through the same
reading, reorientation, intensity and slicing code as users' data:

* **CT** (``generate_ct_phantom`` / ``write_ct_dataset``): an elliptic body of fat (−100 HU) in
  air (−1000 HU) with a vertebral body (bone, 700 HU), liver (~60 HU), spleen (~45 HU), two
  kidneys (~30 HU), unlabelled bowel loops (~15 HU, some gas) and 0–3 hypodense liver lesions
  (~10 HU), plus Gaussian noise. Organ centres and radii vary per seed; the top and bottom slices
  hold no organ (so slicing keeps a share of empty slices). Class ids follow AMOS where AMOS has
  the organ (spleen 1, right kidney 2, left kidney 3, liver 6 in AMOS; here compacted, see
  ``CT_CLASSES`` and ``AMOS_IDS``).
* **MRI** (``generate_brain_phantom`` / ``write_brats_dataset``): a head with four co-registered
  sequences (FLAIR, T1, T1ce, T2, nnU-Net's ``_0000.._0003`` order of MSD Task01) and a tumour
  with BraTS labels 0/1/2/4 (necrotic core 1, oedema 2, enhancing rim 4).
* **X-ray** (``generate_radiograph`` / ``write_xray_dataset``): a chest radiograph (uint8) with
  lungs, ribs, heart and spine, and in "COVID-19" cases ground-glass "infection" blobs inside the
  lungs; written in the CovidQU-Ex layout (see ``write_xray_dataset``).

Volumes are generated in RAS voxel order (axis 0 → patient right, 1 → anterior, 2 → superior)
and written in a **non-RAS** orientation (``orientation``, default ``LPS``, the DICOM patient
frame) with the matching affine in both qform and sform, so readers must reorient. Imports:
numpy, nibabel, Pillow only (no geospatial packages).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitp_geo.io.atomic import atomic_output

# --------------------------------------------------------------------------- class tables
# CT phantom classes, index = label value in the written label maps.
CT_CLASSES: tuple[str, ...] = ("background", "spleen", "right kidney", "left kidney", "liver", "liver lesion")
# The AMOS2022 label table (ids 0-15), for AMOS-layout fixtures (``write_ct_dataset(label_table=…)``).
AMOS_CLASSES: tuple[str, ...] = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gall bladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "postcava",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
    "duodenum",
    "bladder",
    "prostate/uterus",
)
# CT-like values in Hounsfield units (mean, per-case jitter half-range).
HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 10.0),
    "bowel": (15.0, 5.0),
    "gas": (-700.0, 100.0),
    "liver": (60.0, 5.0),
    "spleen": (45.0, 4.0),
    "kidney": (30.0, 4.0),
    "lesion": (10.0, 5.0),
    "bone": (700.0, 80.0),
}
# BraTS label values (MSD Task01 / BraTS 2021): 0 background, 1 necrotic / non-enhancing core,
# 2 peritumoral oedema, 4 enhancing tumour (there is no 3).
BRATS_LABELS: dict[str, int] = {
    "background": 0,
    "necrotic tumour core": 1,
    "peritumoral edema": 2,
    "enhancing tumour": 4,
}
BRATS_SEQUENCES: tuple[str, ...] = ("FLAIR", "T1", "T1ce", "T2")  # channels _0000.._0003
XRAY_CLASSES: tuple[str, ...] = ("background", "lung", "infection")
XRAY_CATEGORIES: tuple[str, ...] = ("COVID-19", "Normal")


@dataclass
class VolumePhantom:
    """A generated volume in RAS voxel order.

    Attributes:
        image: (X, Y, Z) float32 (CT: HU) or (C, X, Y, Z) for multi-sequence MRI.
        label: (X, Y, Z) uint8 label values.
        affine: 4×4 voxel → RAS+ millimetres for the RAS-ordered arrays.
        modality: ``CT`` or ``MRI``.
        channel_names: one name per image channel.
        labels: label name → value.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    modality: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]


@dataclass
class Radiograph:
    """A generated chest radiograph: ``image`` (H, W) uint8, ``lung`` / ``infection`` (H, W) bool."""

    image: np.ndarray
    lung: np.ndarray
    infection: np.ndarray
    category: str

    @property
    def label(self) -> np.ndarray:
        """(H, W) uint8 class ids of ``XRAY_CLASSES`` (infection over lung over background)."""
        out = self.lung.astype(np.uint8)
        out[self.infection] = 2
        return out


# --------------------------------------------------------------------------- geometry helpers
def _grid(shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Voxel-centre coordinates in [-1, 1] along each axis (``indexing='ij'``)."""
    axes = [(np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1 for n in shape]
    return tuple(np.meshgrid(*axes, indexing="ij"))


def _ellipsoid(coords: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    d = sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii, strict=True))
    return np.asarray(d <= 1.0)


def _value(rng: np.random.Generator, name: str) -> float:
    mean, jitter = HU[name]
    return float(mean + rng.uniform(-jitter, jitter))


def _ras_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Voxel → RAS for RAS-ordered arrays, centred on the volume."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)]
    return aff


# --------------------------------------------------------------------------- CT
def generate_ct_phantom(
    seed: int,
    shape: tuple[int, int, int] = (112, 112, 24),
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0),
    noise_hu: float = 12.0,
    max_lesions: int = 3,
) -> VolumePhantom:
    """An abdominal CT phantom (module doc).

    Args:
        seed: the only source of randomness.
        shape: (X, Y, Z) voxels in RAS order; Z is the axial (slice) axis.
        spacing: voxel size in mm along X, Y, Z.
        noise_hu: standard deviation of the Gaussian noise in HU.
        max_lesions: up to this many liver lesions (0 = none; AMOS has no lesion class).

    Returns:
        A ``VolumePhantom`` with ``image`` in HU (float32) and ``label`` values of ``CT_CLASSES``.
    """
    if min(shape) < 4:
        raise ValueError(f"shape must be at least 4 voxels along every axis, got {shape}")
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape)

    def jit(v: float, amount: float = 0.05) -> float:
        return v + float(rng.uniform(-amount, amount))

    def scale(v: float) -> float:
        return v * float(rng.uniform(0.85, 1.15))

    image = np.full(shape, HU["air"][0], np.float32)
    label = np.zeros(shape, np.uint8)
    body = (x / jit(0.9, 0.03)) ** 2 + (y / jit(0.7, 0.03)) ** 2 <= 1.0
    image[body] = _value(rng, "fat")
    # Bowel loops (unlabelled soft tissue, some with gas) in the anterior abdomen.
    for _ in range(int(rng.integers(4, 8))):
        c = (float(rng.uniform(-0.45, 0.45)), float(rng.uniform(0.05, 0.45)), float(rng.uniform(-0.6, 0.6)))
        r = (float(rng.uniform(0.06, 0.12)),) * 2 + (float(rng.uniform(0.2, 0.45)),)
        loop = _ellipsoid((x, y, z), c, r) & body
        image[loop] = _value(rng, "bowel")
        if rng.random() < 0.4:
            image[_ellipsoid((x, y, z), c, tuple(v * 0.45 for v in r)) & body] = _value(rng, "gas")
    # Vertebral body: a bone column, posterior midline.
    spine = (x / 0.11) ** 2 + ((y - jit(-0.48, 0.02)) / 0.11) ** 2 <= 1.0
    image[spine] = _value(rng, "bone")
    organs = (  # (class, HU key, centre, radii)
        ("liver", "liver", (jit(0.42), jit(0.08), jit(0.1)), (scale(0.36), scale(0.42), scale(0.7))),
        ("spleen", "spleen", (jit(-0.5), jit(-0.12), jit(0.3)), (scale(0.17), scale(0.22), scale(0.38))),
        (
            "right kidney",
            "kidney",
            (jit(0.3), jit(-0.36), jit(-0.1)),
            (scale(0.11), scale(0.15), scale(0.35)),
        ),
        (
            "left kidney",
            "kidney",
            (jit(-0.3), jit(-0.36), jit(-0.05)),
            (scale(0.11), scale(0.15), scale(0.35)),
        ),
    )
    for name, tissue, centre, radii in organs:
        # Organs stay clear of the top and bottom slices: those are empty slices.
        m = _ellipsoid((x, y, z), centre, radii) & body & (np.abs(z) < 0.8) & ~spine
        image[m] = _value(rng, tissue)
        label[m] = CT_CLASSES.index(name)
    liver = label == CT_CLASSES.index("liver")
    if liver.any() and max_lesions > 0:
        idx = np.argwhere(liver)
        for _ in range(int(rng.integers(0, max_lesions + 1))):
            cx, cy, cz = (idx[int(rng.integers(len(idx)))] + 0.5) / np.array(shape) * 2 - 1
            rad = float(rng.uniform(0.05, 0.09))
            m = _ellipsoid((x, y, z), (cx, cy, cz), (rad, rad, rad * 2.5)) & liver
            image[m] = _value(rng, "lesion")
            label[m] = CT_CLASSES.index("liver lesion")
    image[body] += rng.normal(0.0, noise_hu, int(body.sum())).astype(np.float32)
    return VolumePhantom(
        image=image,
        label=label,
        affine=_ras_affine(shape, spacing),
        modality="CT",
        channel_names=("CT",),
        labels={name: i for i, name in enumerate(CT_CLASSES)},
    )


# --------------------------------------------------------------------------- MRI
def generate_brain_phantom(
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 16),
    spacing: tuple[float, float, float] = (3.0, 3.0, 6.0),
    noise: float = 0.04,
) -> VolumePhantom:
    """A brain MRI phantom with 4 sequences and a BraTS-labelled tumour (module doc).

    Returns:
        ``image`` (4, X, Y, Z) float32 in arbitrary MR units (0 outside the head), channels in
        ``BRATS_SEQUENCES`` order; ``label`` with BraTS values 0/1/2/4.
    """
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape)
    head = _ellipsoid((x, y, z), (0, 0, 0), (0.8, 0.9, 0.95))
    brain = _ellipsoid((x, y, z), (0, 0, 0), (0.72, 0.82, 0.85))
    ventricles = _ellipsoid((np.abs(x), y, z), (0.12, 0.05, 0.05), (0.08, 0.25, 0.3))
    c = (float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.3, 0.3)))
    r = float(rng.uniform(0.16, 0.24))
    edema = _ellipsoid((x, y, z), c, (r * 1.6, r * 1.6, r * 2.2)) & brain
    enhancing = _ellipsoid((x, y, z), c, (r, r, r * 1.4)) & brain
    core = _ellipsoid((x, y, z), c, (r * 0.55, r * 0.55, r * 0.8)) & brain
    label = np.zeros(shape, np.uint8)
    label[edema] = BRATS_LABELS["peritumoral edema"]
    label[enhancing] = BRATS_LABELS["enhancing tumour"]
    label[core] = BRATS_LABELS["necrotic tumour core"]
    # Tissue intensities per sequence: (scalp/skull, brain, CSF, oedema, enhancing, necrosis).
    table = {
        "FLAIR": (0.5, 0.45, 0.1, 0.9, 0.7, 0.3),
        "T1": (0.7, 0.55, 0.2, 0.45, 0.5, 0.25),
        "T1ce": (0.7, 0.55, 0.2, 0.45, 1.0, 0.25),
        "T2": (0.4, 0.5, 1.0, 0.85, 0.7, 0.95),
    }
    image = np.zeros((len(BRATS_SEQUENCES), *shape), np.float32)
    for ch, seq in enumerate(BRATS_SEQUENCES):
        skull, tissue, csf, ed, enh, nec = table[seq]
        v = image[ch]
        v[head] = skull
        v[brain] = tissue
        v[ventricles & brain] = csf
        v[edema] = ed
        v[enhancing] = enh
        v[core] = nec
        gain = float(rng.uniform(0.8, 1.2)) * 1000.0  # MR units are arbitrary per scan
        v[head] += rng.normal(0.0, noise, int(head.sum())).astype(np.float32)
        image[ch] = np.clip(v, 0, None) * gain
    return VolumePhantom(
        image=image,
        label=label,
        affine=_ras_affine(shape, spacing),
        modality="MRI",
        channel_names=BRATS_SEQUENCES,
        labels=dict(BRATS_LABELS),
    )


# --------------------------------------------------------------------------- writing volumes
def reorient_from_ras(
    data: np.ndarray, affine: np.ndarray, orientation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Re-express a RAS-ordered (X, Y, Z) array in another voxel orientation.

    Args:
        data: (X, Y, Z) array in RAS voxel order.
        affine: its voxel → RAS affine.
        orientation: three axis codes, e.g. ``LPS``, ``PIL``, ``RAS`` (nibabel's codes).

    Returns:
        The array with axes permuted / flipped so that its axes point along ``orientation``, and
        the affine that maps its voxels to the same RAS+ millimetres.
    """
    import nibabel as nib

    codes = tuple(orientation.upper())
    try:
        target = nib.orientations.axcodes2ornt(codes)
    except ValueError as err:
        raise ValueError(f"orientation must be 3 axis codes such as LPS or PIL, got {orientation!r}") from err
    if len(codes) != 3 or np.isnan(target).any():
        raise ValueError(f"orientation must be 3 axis codes such as LPS or PIL, got {orientation!r}")
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), target)
    out = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), new_affine


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)  # scanner coordinates, as scanners' converters write
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _check_new_dir(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise ValueError(f"{root} exists and is not empty; pass overwrite=True to replace it")


def write_msd_dataset(
    root: str | Path,
    cases: Sequence[VolumePhantom],
    *,
    name: str,
    orientation: str = "LPS",
    label_table: Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write volumes in the MSD / nnU-Net v2 layout, atomically.

    Layout::

        root/imagesTr/case_000_0000.nii.gz   (one file per channel: _0000, _0001, …)
        root/labelsTr/case_000.nii.gz        (uint8 label values)
        root/dataset.json                    (nnU-Net v2: channel_names, labels name → value,
                                              numTraining, file_ending; plus MSD's "modality"
                                              and "training" list)

    Args:
        root: dataset folder (must not exist or be empty unless ``overwrite``).
        cases: phantoms of one kind (same channels and labels).
        name: dataset name in ``dataset.json``.
        orientation: axis codes the arrays are stored in (``LPS`` by default: not RAS, so readers
            must reorient).
        label_table: the ``labels`` written to ``dataset.json`` (name → value); default the
            phantoms' own. Every phantom label name must be in it; values are remapped by name.
        overwrite: replace a non-empty ``root``.

    Returns:
        ``root``.
    """
    root = Path(root)
    if not cases:
        raise ValueError("no cases to write")
    _check_new_dir(root, overwrite)
    first = cases[0]
    table = dict(label_table) if label_table is not None else dict(first.labels)
    missing = sorted(set(first.labels) - set(table))
    if missing:
        raise ValueError(f"label_table lacks the phantom label(s) {missing}")
    lut = np.zeros(256, np.uint8)
    for label_name, value in first.labels.items():
        lut[value] = table[label_name]
    with atomic_output(root) as tmp:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        training = []
        for i, case in enumerate(cases):
            stem = f"case_{i:03d}"
            channels = case.image[None] if case.image.ndim == 3 else case.image
            for c, channel in enumerate(channels):
                data = (
                    np.round(channel).astype(np.int16)
                    if case.modality == "CT"
                    else channel.astype(np.float32)
                )
                out, aff = reorient_from_ras(data, case.affine, orientation)
                _save_nifti(tmp / "imagesTr" / f"{stem}_{c:04d}.nii.gz", out, aff)
            out, aff = reorient_from_ras(lut[case.label], case.affine, orientation)
            _save_nifti(tmp / "labelsTr" / f"{stem}.nii.gz", out, aff)
            training.append({"image": f"./imagesTr/{stem}.nii.gz", "label": f"./labelsTr/{stem}.nii.gz"})
        meta = {
            "name": name,
            "description": "seeded synthetic phantoms (vitp_geo.medical.phantoms)",
            "channel_names": {str(c): n for c, n in enumerate(first.channel_names)},
            "modality": {str(c): n for c, n in enumerate(first.channel_names)},
            "labels": table,
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "training": training,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def write_ct_dataset(
    root: str | Path,
    n_cases: int = 4,
    seed: int = 0,
    *,
    shape: tuple[int, int, int] = (112, 112, 24),
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0),
    orientation: str = "LPS",
    label_table: Mapping[str, int] | None = None,
    max_lesions: int = 3,
    overwrite: bool = False,
) -> Path:
    """``n_cases`` CT phantoms (seeds ``seed·1000 + i``) in the MSD / nnU-Net layout.

    ``label_table=dict(zip(AMOS_CLASSES, range(16)))`` with ``max_lesions=0`` writes an
    AMOS-layout fixture (AMOS label ids, AMOS ``dataset.json``).
    """
    cases = [
        generate_ct_phantom(seed * 1000 + i, shape=shape, spacing=spacing, max_lesions=max_lesions)
        for i in range(n_cases)
    ]
    if label_table is not None and max_lesions == 0:
        for case in cases:  # no lesion voxels: the lesion class need not be in the table
            case.labels.pop("liver lesion", None)
    return write_msd_dataset(
        root, cases, name="phantom_ct", orientation=orientation, label_table=label_table, overwrite=overwrite
    )


def write_brats_dataset(
    root: str | Path,
    n_cases: int = 2,
    seed: int = 0,
    *,
    shape: tuple[int, int, int] = (64, 64, 16),
    orientation: str = "LPS",
    overwrite: bool = False,
) -> Path:
    """``n_cases`` brain phantoms in the MSD / nnU-Net BraTS layout (4 channels, labels 0/1/2/4)."""
    cases = [generate_brain_phantom(seed * 1000 + i, shape=shape) for i in range(n_cases)]
    return write_msd_dataset(root, cases, name="phantom_brats", orientation=orientation, overwrite=overwrite)


# --------------------------------------------------------------------------- X-ray
def generate_radiograph(seed: int, size: int = 256, infected: bool | None = None) -> Radiograph:
    """A chest radiograph phantom (PA view: the patient's right lung on the image's left).

    Args:
        seed: the only source of randomness.
        size: image side in pixels (CovidQU-Ex images are 256 × 256).
        infected: draw infection blobs (a "COVID-19" case); None = by coin flip.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    rng = np.random.default_rng(seed)
    if infected is None:
        infected = bool(rng.random() < 0.5)
    yy, xx = _grid((size, size))  # rows (top -1 → bottom 1), columns (left -1 → right 1)
    img = np.full((size, size), 0.08, np.float32)
    body = (xx / float(rng.uniform(0.85, 0.95))) ** 2 + ((yy - 0.1) / 1.05) ** 2 <= 1.0
    img[body] = 0.62
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        cx = side * float(rng.uniform(0.36, 0.42))
        lung = _ellipsoid(
            (xx, yy), (cx, float(rng.uniform(-0.12, -0.02))), (rng.uniform(0.22, 0.28), rng.uniform(0.5, 0.6))
        )
        lungs |= lung & body
    img[lungs] = 0.22
    heart = _ellipsoid((xx, yy), (float(rng.uniform(0.02, 0.1)), 0.22), (0.2, 0.22))
    lungs &= ~heart
    img[heart & body] = 0.7
    img[(np.abs(xx) < 0.07) & body] = 0.8  # spine / mediastinum
    # Ribs: bright arcs over the lungs (not part of any mask).
    phase = float(rng.uniform(0, np.pi))
    ribs = (np.sin((yy + 0.25 * xx**2) * 14 + phase) > 0.85) & body
    img[ribs] += 0.18
    infection = np.zeros((size, size), bool)
    if infected:
        idx = np.argwhere(lungs)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = (idx[int(rng.integers(len(idx)))] + 0.5) / size * 2 - 1
            blob = _ellipsoid((xx, yy), (cx, cy), (rng.uniform(0.08, 0.16), rng.uniform(0.08, 0.2))) & lungs
            infection |= blob
        img[infection] += 0.25  # ground-glass opacity
    img += rng.normal(0.0, 0.03, img.shape).astype(np.float32)
    image = np.clip(img * 255, 0, 255).astype(np.uint8)
    return Radiograph(
        image=image, lung=lungs, infection=infection, category="COVID-19" if infected else "Normal"
    )


def write_xray_dataset(
    root: str | Path,
    n_images: int = 8,
    seed: int = 0,
    *,
    size: int = 256,
    splits: Sequence[str] = ("Train", "Val"),
    overwrite: bool = False,
) -> Path:
    """Radiograph phantoms in the CovidQU-Ex "Infection Segmentation Data" layout, atomically.

    Layout (as in the released dataset, whose root is
    ``Infection Segmentation Data/Infection Segmentation Data``)::

        root/<split>/<category>/images/<stem>.png           grey-scale image
        root/<split>/<category>/lung masks/<stem>.png       0 / 255
        root/<split>/<category>/infection masks/<stem>.png  0 / 255 (all 0 for Normal)

    with ``<split>`` in ``splits`` and ``<category>`` ``COVID-19`` or ``Normal``. Each split gets
    ``n_images`` images, half of them infected.
    """
    from PIL import Image

    root = Path(root)
    _check_new_dir(root, overwrite)
    with atomic_output(root) as tmp:
        for s, split in enumerate(splits):
            for i in range(n_images):
                xr = generate_radiograph(seed * 1000 + s * 100 + i, size, infected=i % 2 == 0)
                stem = f"{'covid' if xr.category == 'COVID-19' else 'normal'}_{s * 100 + i}"
                base = tmp / split / xr.category
                for sub, arr in (
                    ("images", xr.image),
                    ("lung masks", xr.lung.astype(np.uint8) * 255),
                    ("infection masks", xr.infection.astype(np.uint8) * 255),
                ):
                    (base / sub).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(base / sub / f"{stem}.png")
    return root
