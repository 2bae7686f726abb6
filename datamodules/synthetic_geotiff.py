"""Write scenes of the shared synthetic world (``vitp_geo.synthetic``) as GeoTIFF folders.

The embedded ``vitp-geo finetune`` default, the tests and ``benchmarks/pretrain_gain.py`` use
these folders with the GeoTIFF datamodules, so the default run goes through the same reading,
tiling and area split as users' data. Scenes are placed side by side (no overlap) in the
synthetic world's CRS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitp_geo.synthetic.scene import (
    DEFAULT_ORIGIN,
    generate_change_pair,
    generate_scene,
    write_change_pair,
    write_scene,
)


@dataclass
class SyntheticFolders:
    """Folders written by the writers below (``labels`` also holds change masks)."""

    images: Path
    labels: Path
    vectors: Path | None = None
    after: Path | None = None


def _origin(i: int, size: int, pixel_size: float) -> tuple[float, float]:
    gap = 64 * pixel_size  # scenes never touch
    return (DEFAULT_ORIGIN[0] + i * (size * pixel_size + gap), DEFAULT_ORIGIN[1])


def _move_into(files: list[tuple[Path, Path | None]]) -> None:
    """Move each written file into its folder (created)."""
    for src, dst in files:
        assert dst is not None
        dst.mkdir(parents=True, exist_ok=True)
        src.replace(dst / src.name)


def _write_scenes(
    directory: str | Path, n_scenes: int, size: int, seed: int, pixel_size: float, scene_class: int | None
) -> SyntheticFolders:
    root = Path(directory)
    folders = SyntheticFolders(root / "images", root / "labels", root / "vectors")
    for i in range(n_scenes):
        scene = generate_scene(
            seed + i,
            size,
            pixel_size=pixel_size,
            origin=_origin(i, size, pixel_size),
            scene_class=scene_class,
        )
        paths = write_scene(scene, root / "tmp", stem=f"scene_{i}")
        _move_into(
            [(paths.image, folders.images), (paths.mask, folders.labels), (paths.objects, folders.vectors)]
        )
    (root / "tmp").rmdir()
    return folders


def write_synthetic_segmentation(
    directory: str | Path, n_scenes: int = 2, size: int = 336, seed: int = 0, pixel_size: float = 0.5
) -> SyntheticFolders:
    """``images/scene_i.tif`` (3-band uint8), ``labels/scene_i_mask.tif`` and ``vectors/scene_i_objects.gpkg``."""
    return _write_scenes(directory, n_scenes, size, seed, pixel_size, scene_class=None)


def write_synthetic_change(
    directory: str | Path, n_pairs: int = 2, size: int = 336, seed: int = 0, pixel_size: float = 0.5
) -> SyntheticFolders:
    """``before/pair_i_before.tif``, ``after/pair_i_after.tif`` and ``labels/pair_i_change.tif``."""
    root = Path(directory)
    folders = SyntheticFolders(root / "before", root / "labels", after=root / "after")
    for i in range(n_pairs):
        pair = generate_change_pair(
            seed + i, size, pixel_size=pixel_size, origin=_origin(i, size, pixel_size)
        )
        b, a, c = write_change_pair(pair, root / "tmp", stem=f"pair_{i}")
        _move_into([(b, folders.images), (a, folders.after), (c, folders.labels)])
    (root / "tmp").rmdir()
    return folders


def write_synthetic_detection(
    directory: str | Path, n_scenes: int = 4, size: int = 336, seed: int = 0, pixel_size: float = 0.5
) -> SyntheticFolders:
    """Residential scenes for detection: ``images/scene_i.tif`` and ``vectors/scene_i_objects.gpkg``.

    Buildings are rotated rectangles in the object layer (``class_name`` ``building``), so their
    polygons are exact oriented ground truth. Also writes ``labels/scene_i_mask.tif``.
    """
    return _write_scenes(directory, n_scenes, size, seed, pixel_size, scene_class=0)
