"""One seeded generator of georeferenced aerial-like scenes.

Everything synthetic in vitp-geo (the embedded defaults, the examples, most tests and the
benchmarks) comes from here: a scene is an RGB image with a real CRS and transform, its class
mask, the object polygons behind the mask, and a scene-level class. Change pairs are the same
scene before and after buildings appear or vanish.

The world is learnable but not trivial: class colours are drawn per scene from overlapping ranges
(dirt roads look like soil, ripe fields like dry grass, turbid water like dark grass, roofs take
any colour), so colour alone does not decide the class; texture (crop-row stripes, blotchy
ground, smooth water and asphalt), shape (rectangular roofs with a gable and a cast shadow,
straight road bands with a centre line) and context do. A linear probe on raw 14x14 pixel patches
stays below 0.45 mIoU (``tests/test_synthetic.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from shapely.affinity import rotate, translate
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

# Colour ranges, per (low, high) RGB box; each scene draws its colours from them. They overlap on
# purpose (dirt roads look like soil, yellow fields like dry grass, turbid water like dark grass,
# roofs take any colour), so that texture, shape and context decide the class, not colour alone.
_RANGES: dict[str, np.ndarray] = {
    "grass": np.array([[[80, 100, 55], [130, 145, 95]]], np.float32),
    "soil": np.array([[[115, 95, 65], [165, 135, 105]]], np.float32),
    "field": np.array(
        [
            [[95, 130, 45], [150, 180, 85]],  # green crops
            [[160, 150, 75], [205, 190, 115]],  # ripe / dry
            [[115, 90, 60], [155, 125, 95]],  # ploughed
        ],
        np.float32,
    ),
    "paved": np.array([[[80, 80, 82], [125, 125, 130]]], np.float32),
    "dirt": np.array([[[125, 105, 80], [165, 140, 110]]], np.float32),
    "water": np.array(
        [[[25, 50, 80], [60, 90, 125]], [[55, 75, 55], [90, 105, 85]]],  # clear, turbid
        np.float32,
    ),
    "roof": np.array([[[70, 60, 55], [225, 215, 210]]], np.float32),
}

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


def _low_freq(rng: np.random.Generator, height: int, width: int, waves: int = 4) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a sum of ``waves`` random plane waves (H, W)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    field = np.zeros((height, width), np.float32)
    for _ in range(waves):
        theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        period = rng.uniform(0.3, 1.2) * max(height, width)
        field += np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    return field / np.sqrt(waves / 2)


def _pick(rng: np.random.Generator, ranges: np.ndarray) -> np.ndarray:
    """One RGB colour: one of the ``(k, 2, 3)`` low/high boxes, uniform inside it."""
    lo, hi = ranges[int(rng.integers(len(ranges)))]
    return rng.uniform(lo, hi).astype(np.float32)


def _render(rng: np.random.Generator, mask: np.ndarray, objects_px: list[tuple[int, Polygon]]) -> np.ndarray:
    """Colour the mask: per-scene colours drawn from overlapping ranges, per-class textures, noise.

    Colour alone does not tell the classes apart (see the module doc); texture and shape do:
    background is a blotchy grass/soil mix, fields carry crop-row stripes, roofs are flat with a
    gable split and a cast shadow, roads are smooth (paved ones with a centre line), water is the
    smoothest surface of all.
    """
    height, width = mask.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    noise_sigma = np.zeros((height, width), np.float32)

    # Background: two per-scene colours blended by a smooth field (grass and bare soil patches).
    grass, soil = _pick(rng, _RANGES["grass"]), _pick(rng, _RANGES["soil"])
    blend = 1.0 / (1.0 + np.exp(-2.5 * _low_freq(rng, height, width, 6)))
    bg = grass[None, None] * blend[..., None] + soil[None, None] * (1.0 - blend[..., None])
    img[:] = bg
    noise_sigma[:] = 9.0

    # Roads: paved (grey, centre line) or dirt (soil-like) for the whole scene.
    road = mask == 2
    paved = bool(rng.random() < 0.6)
    img[road] = _pick(rng, _RANGES["paved" if paved else "dirt"])
    noise_sigma[road] = 3.0

    # Water: dark blue to turbid green-brown, very smooth, darker away from the shore.
    water = mask == 3
    if water.any():
        img[water] = _pick(rng, _RANGES["water"]) + 6.0 * _low_freq(rng, height, width, 2)[water, None]
        noise_sigma[water] = 1.5

    for cid, poly in objects_px:
        inside = _rasterize([poly], height, width)
        if cid == 4:  # field parcel: its own crop colour and row stripes at its own angle
            px = inside & (mask == 4)
            theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 6.0)
            amp = rng.uniform(12.0, 24.0)
            stripes = amp * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
            img[px] = _pick(rng, _RANGES["field"]) + stripes[px, None]
            noise_sigma[px] = 5.0
        elif cid == 1:  # building: flat roof, gable halves, shadow cast to the lower right
            shadow = _rasterize([translate(poly, 3.0, 3.0)], height, width) & ~inside & (mask != 1)
            img[shadow] *= 0.55
            roof = _pick(rng, _RANGES["roof"])
            c = poly.centroid
            rect = np.asarray(poly.exterior.coords)[:4]
            edge = (
                rect[1] - rect[0]
                if np.linalg.norm(rect[1] - rect[0]) >= np.linalg.norm(rect[2] - rect[1])
                else rect[2] - rect[1]
            )
            normal = np.array([-edge[1], edge[0]]) / max(np.linalg.norm(edge), 1e-6)
            side = ((xx - c.x) * normal[0] + (yy - c.y) * normal[1]) > 0
            img[inside] = roof + np.where(side[inside], 14.0, -14.0)[:, None]
            noise_sigma[inside] = 3.0

    if paved:  # dashed centre line on paved roads (roads are straight, axis-aligned bands)
        rows = np.flatnonzero(road.all(axis=1))
        cols = np.flatnonzero(road.all(axis=0))
        for idx, axis in ((rows, 0), (cols, 1)):
            if idx.size:
                mid = int(idx[idx.size // 2])
                dash = (np.arange(width if axis == 0 else height) // 6) % 2 == 0
                line = np.zeros((height, width), bool)
                if axis == 0:
                    line[mid, :] = dash
                else:
                    line[:, mid] = dash
                img[line & road] = 215.0

    # Scene-wide illumination, haze and pixel noise.
    img += 8.0 * _low_freq(rng, height, width, 2)[..., None]
    haze = rng.uniform(0.0, 0.25)
    img = img * (1 - haze) + haze * 170.0
    img += rng.normal(0, 1.0, img.shape).astype(np.float32) * noise_sigma[..., None]
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
