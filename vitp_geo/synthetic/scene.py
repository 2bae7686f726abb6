"""One seeded generator of georeferenced aerial-like scenes.

Everything synthetic in vitp-geo (the embedded defaults, the examples, most tests and the
benchmarks) comes from here: a scene is an RGB image with a real CRS and transform, its class
mask, the object polygons behind the mask, and a scene-level class. Change pairs are the same
scene before and after buildings appear or vanish.

The world is deliberately simple but learnable: every class has its own colour and texture, so a
model that sees the pixels can answer questions about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from shapely.affinity import rotate
from shapely.geometry import Polygon, box

# Class ids in the mask. 0 is background (bare soil / grass).
CLASS_NAMES: tuple[str, ...] = ("background", "building", "road", "water", "field")
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (220, 20, 60),
    (128, 128, 128),
    (30, 144, 255),
    (154, 205, 50),
)
# Scene-level classes: what dominates the scene.
SCENE_CLASSES: tuple[str, ...] = ("residential", "farmland", "lakeside")

# Mean RGB per class in the rendered image (background first). Texture noise is added on top.
_PALETTE = np.array(
    [
        [118, 128, 86],  # background: grass / soil
        [196, 170, 150],  # building roofs (varied per building below)
        [92, 92, 96],  # road asphalt
        [38, 72, 110],  # water
        [150, 170, 60],  # field crops
    ],
    dtype=np.float32,
)

DEFAULT_CRS = "EPSG:32633"  # UTM 33N: a metric CRS so areas and distances are meaningful.
DEFAULT_ORIGIN = (500_000.0, 5_000_000.0)  # upper-left corner (easting, northing) in metres


@dataclass
class SyntheticScene:
    """A generated scene.

    Attributes:
        image: (3, H, W) uint8 RGB.
        mask: (H, W) uint8 class ids (see ``CLASS_NAMES``).
        objects: instance polygons in map coordinates, one dict per object with keys
            ``class_id``, ``class_name`` and ``geometry`` (a shapely Polygon).
        transform: affine pixel → map transform (north-up).
        crs: CRS string understood by rasterio / pyproj.
        scene_class: index into ``SCENE_CLASSES``.
    """

    image: np.ndarray
    mask: np.ndarray
    objects: list[dict[str, object]]
    transform: Affine
    crs: str
    scene_class: int

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


@dataclass
class ChangePair:
    """Before/after scenes of the same place and the binary change mask (1 = changed)."""

    before: SyntheticScene
    after: SyntheticScene
    change_mask: np.ndarray  # (H, W) uint8


def _pixel_polygon_to_map(poly: Polygon, transform: Affine) -> Polygon:
    return Polygon([transform @ (x, y) for x, y in poly.exterior.coords])


def _rasterize(polys: list[Polygon], height: int, width: int) -> np.ndarray:
    """Boolean (H, W) raster of pixel-space polygons (pixel centres inside)."""
    from rasterio.features import rasterize

    if not polys:
        return np.zeros((height, width), dtype=bool)
    out = rasterize([(p, 1) for p in polys], out_shape=(height, width), fill=0, dtype="uint8")
    return out.astype(bool)


def _buildings(rng: np.random.Generator, n: int, height: int, width: int, free: np.ndarray) -> list[Polygon]:
    """Place up to ``n`` rotated rectangles on free ground, without overlaps."""
    placed: list[Polygon] = []
    occupied = ~free
    tries = 0
    while len(placed) < n and tries < n * 30:
        tries += 1
        w = rng.uniform(0.035, 0.09) * width
        h = rng.uniform(0.035, 0.09) * height
        cx = rng.uniform(w, width - w)
        cy = rng.uniform(h, height - h)
        poly = rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), rng.uniform(0, 90))
        footprint = _rasterize([poly.buffer(2.0)], height, width)
        if (footprint & occupied).any():
            continue
        occupied |= footprint
        placed.append(poly)
    return placed


def generate_scene(
    seed: int,
    size: int | tuple[int, int] = 512,
    *,
    pixel_size: float = 0.5,
    crs: str = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    scene_class: int | None = None,
) -> SyntheticScene:
    """Generate one seeded scene.

    Args:
        seed: the only source of randomness; the same seed gives the same scene.
        size: ``H`` or ``(H, W)`` in pixels.
        pixel_size: ground sampling distance in CRS units (metres for the default CRS).
        crs: CRS of the transform.
        origin: map coordinates of the upper-left corner.
        scene_class: force a scene class (index into ``SCENE_CLASSES``); random if None.

    Returns:
        The scene with image (3, H, W) uint8 and mask (H, W) uint8.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16 pixels a side, got {(height, width)}")
    if pixel_size <= 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    rng = np.random.default_rng(seed)
    kind = int(rng.integers(len(SCENE_CLASSES))) if scene_class is None else scene_class
    if not 0 <= kind < len(SCENE_CLASSES):
        raise ValueError(f"scene_class must be in [0, {len(SCENE_CLASSES)}), got {scene_class}")
    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    mask = np.zeros((height, width), dtype=np.uint8)
    objects_px: list[tuple[int, Polygon]] = []

    # Water: one or two blobs; large in lakeside scenes.
    n_water = {0: int(rng.integers(0, 2)), 1: int(rng.integers(0, 2)), 2: 1 + int(rng.integers(0, 2))}[kind]
    for _ in range(n_water):
        r = rng.uniform(0.18, 0.3) if kind == 2 else rng.uniform(0.06, 0.12)
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
        radii = r * min(height, width) * rng.uniform(0.7, 1.2, angles.size)
        poly = Polygon(np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)]).buffer(0)
        poly = poly.intersection(box(0, 0, width, height))
        if poly.geom_type != "Polygon" or poly.area < 50:
            continue
        objects_px.append((3, poly))
        mask[_rasterize([poly], height, width)] = 3

    # Fields: axis-aligned parcels; many in farmland scenes.
    n_fields = {0: int(rng.integers(0, 2)), 1: 3 + int(rng.integers(0, 3)), 2: int(rng.integers(0, 2))}[kind]
    for _ in range(n_fields):
        fw, fh = rng.uniform(0.15, 0.3) * width, rng.uniform(0.15, 0.3) * height
        x0, y0 = rng.uniform(0, width - fw), rng.uniform(0, height - fh)
        poly = box(x0, y0, x0 + fw, y0 + fh)
        pix = _rasterize([poly], height, width) & (mask == 0)
        if pix.sum() < 0.5 * poly.area:
            continue
        objects_px.append((4, poly))
        mask[pix] = 4

    # Roads: one horizontal and one vertical straight road of a few metres width.
    road_w = max(2, int(round(0.025 * min(height, width))))
    for axis in range(int(rng.integers(1, 3))):
        pos = int(rng.uniform(0.15, 0.85) * (height if axis == 0 else width))
        sl = slice(max(0, pos - road_w // 2), pos + road_w // 2 + 1)
        if axis == 0:
            mask[sl, :][mask[sl, :] != 3] = 2
        else:
            mask[:, sl][mask[:, sl] != 3] = 2

    # Buildings: on free ground (not water, road or field); many in residential scenes.
    n_buildings = {0: 8 + int(rng.integers(0, 8)), 1: int(rng.integers(0, 4)), 2: int(rng.integers(1, 5))}[
        kind
    ]
    for poly in _buildings(rng, n_buildings, height, width, free=(mask == 0)):
        objects_px.append((1, poly))
        mask[_rasterize([poly], height, width)] = 1

    image = _render(rng, mask, objects_px)
    objects = [
        {
            "class_id": cid,
            "class_name": CLASS_NAMES[cid],
            "geometry": _pixel_polygon_to_map(poly, transform),
        }
        for cid, poly in objects_px
    ]
    return SyntheticScene(image, mask, objects, transform, crs, kind)


def _render(rng: np.random.Generator, mask: np.ndarray, objects_px: list[tuple[int, Polygon]]) -> np.ndarray:
    """Colour the mask with per-class palettes, per-building roof colours and noise."""
    height, width = mask.shape
    img = _PALETTE[mask].copy()  # (H, W, 3)
    for cid, poly in objects_px:
        if cid == 1:  # each roof gets its own tint, so buildings differ from each other
            tint = rng.uniform(-40, 40, 3).astype(np.float32)
            img[_rasterize([poly], height, width)] += tint
    # Low-frequency illumination plus pixel noise.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 2)
    light = 8.0 * np.sin(xx / width * 2 * np.pi + phase[0]) * np.cos(yy / height * 2 * np.pi + phase[1])
    img += light[..., None]
    img += rng.normal(0, 6.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def generate_change_pair(
    seed: int,
    size: int | tuple[int, int] = 512,
    *,
    pixel_size: float = 0.5,
    crs: str = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
) -> ChangePair:
    """Generate a before/after pair: the after scene gains new buildings and loses some.

    The change mask marks pixels whose class differs between the two dates (1 = changed).
    """
    before = generate_scene(seed, size, pixel_size=pixel_size, crs=crs, origin=origin)
    rng = np.random.default_rng(seed + 1_000_003)
    height, width = before.mask.shape
    mask = before.mask.copy()
    objects_px: list[tuple[int, Polygon]] = []
    inv = ~before.transform
    for obj in before.objects:
        geom = obj["geometry"]
        assert isinstance(geom, Polygon)
        px = Polygon([inv @ (x, y) for x, y in geom.exterior.coords])
        cid = int(obj["class_id"])  # type: ignore[call-overload]
        if cid == 1 and rng.random() < 0.3:  # demolished: back to background
            mask[_rasterize([px], height, width)] = 0
            continue
        objects_px.append((cid, px))
    for poly in _buildings(rng, 2 + int(rng.integers(0, 5)), height, width, free=(mask == 0)):
        objects_px.append((1, poly))
        mask[_rasterize([poly], height, width)] = 1
    # Re-render the whole after image with the same illumination seed family.
    image = _render(np.random.default_rng(seed + 2_000_003), mask, objects_px)
    objects = [
        {"class_id": c, "class_name": CLASS_NAMES[c], "geometry": _pixel_polygon_to_map(p, before.transform)}
        for c, p in objects_px
    ]
    after = SyntheticScene(image, mask, objects, before.transform, crs, before.scene_class)
    change = (before.mask != mask).astype(np.uint8)
    return ChangePair(before, after, change)


@dataclass
class ScenePaths:
    """Files written by ``write_scene``."""

    image: Path
    mask: Path
    objects: Path


def write_scene(scene: SyntheticScene, directory: str | Path, stem: str = "scene") -> ScenePaths:
    """Write a scene as GeoTIFF image, GeoTIFF mask and GeoPackage objects.

    Returns:
        Paths of ``<stem>.tif`` (3-band uint8), ``<stem>_mask.tif`` (1-band uint8 class ids)
        and ``<stem>_objects.gpkg`` (layer ``objects``: ``class_id``, ``class_name``).
    """
    from vitp_geo.io.raster import write_geotiff
    from vitp_geo.io.vector import write_objects

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = ScenePaths(
        directory / f"{stem}.tif", directory / f"{stem}_mask.tif", directory / f"{stem}_objects.gpkg"
    )
    write_geotiff(paths.image, scene.image, scene.transform, scene.crs)
    write_geotiff(paths.mask, scene.mask[None], scene.transform, scene.crs)
    write_objects(paths.objects, scene.objects, scene.crs)
    return paths


def write_change_pair(pair: ChangePair, directory: str | Path, stem: str = "pair") -> tuple[Path, Path, Path]:
    """Write ``<stem>_before.tif``, ``<stem>_after.tif`` and ``<stem>_change.tif``."""
    from vitp_geo.io.raster import write_geotiff

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    b, a, c = (directory / f"{stem}_{n}.tif" for n in ("before", "after", "change"))
    write_geotiff(b, pair.before.image, pair.before.transform, pair.before.crs)
    write_geotiff(a, pair.after.image, pair.after.transform, pair.after.crs)
    write_geotiff(c, pair.change_mask[None], pair.before.transform, pair.before.crs)
    return b, a, c
