"""The embedded medical corpus behind ``vitp-geo pretrain --domain med`` with no ``--data``.

Made from the seeded phantoms (``vitp_geo.medical.phantoms``) by the same builders users run
on their own data: CT phantoms and BraTS-like MRI phantoms are written in the MSD / nnU-Net
layout (non-RAS NIfTI) and read back by ``MSDSource``, chest radiograph phantoms in the
CovidQU-Ex layout by ``XraySource``. As for ``--domain rs``, the one-look tasks
(``instruct.default_corpus.ALIGN_TASKS``: which structures are visible, is the X-ray infected)
get their own, up-weighted recipe entry ``med_default_align`` (``med_default`` holds the rest).
Deterministic for a given ``seed``; no geospatial package is needed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from vitp_geo.instruct.builders.corpus import Source, build_corpus
from vitp_geo.instruct.default_corpus import _split_alignment
from vitp_geo.medical.instructions import MSDSource, XraySource
from vitp_geo.medical.phantoms import write_brats_dataset, write_ct_dataset, write_xray_dataset


def build_medical_default_corpus(
    out_dir: Path,
    *,
    seed: int = 0,
    n_ct: int = 10,
    n_mri: int = 4,
    n_xray: int = 32,
    align_repeat: float = 4.0,
) -> Path:
    """Generate phantoms, write them in their real layouts and build the corpus into ``out_dir``.

    Args:
        out_dir: the corpus folder (replaced if it exists).
        seed: seeds the phantoms and the template choices.
        n_ct: CT cases (112 × 112 × 24 voxels; about 16 labelled slices each).
        n_mri: brain MRI cases (64 × 64 × 16, 4 sequences, BraTS labels).
        n_xray: chest radiographs (112 × 112, half of them infected).
        align_repeat: ``repeat_time`` of the one-look tasks' entry.

    Returns:
        The path of ``out_dir/recipe.json``.
    """
    if min(n_ct, n_mri, n_xray) < 1:
        raise ValueError(f"need at least one phantom of each kind, got ct={n_ct} mri={n_mri} xray={n_xray}")
    with tempfile.TemporaryDirectory(prefix="vitp_med_corpus_") as tmp:
        work = Path(tmp)
        ct = write_ct_dataset(work / "ct", n_cases=n_ct, seed=seed)
        mri = write_brats_dataset(work / "mri", n_cases=n_mri, seed=seed)
        xray = write_xray_dataset(work / "xray", n_images=n_xray, seed=seed, size=112, splits=("Train",))
        sources: list[Source] = [MSDSource(ct, seed=seed), MSDSource(mri, seed=seed), XraySource(xray)]
        result = build_corpus(out_dir, sources, seed=seed, name="med_default", overwrite=True)
    return _split_alignment(result.recipe, align_repeat, name="med_default")
