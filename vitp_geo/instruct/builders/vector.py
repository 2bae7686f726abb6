"""Scene + vector labels → grounding, referring, counting, presence, oriented-box and description records.

Edge rule (objects cut by a tile edge): an object is clipped to the tile; it is *kept* when at
least ``min_visible`` (default 0.5) of its area lies inside the tile, and its box is the bounding
box of the clipped part. Objects with a smaller visible share are *ambiguous*: they are left out of
every answer, and a class whose only objects in the tile are ambiguous gets no presence question
(neither "yes" nor "no" would be right). Counts are the number of kept objects.

Coordinates: boxes ``[x1, y1, x2, y2]`` and oriented boxes (``<quad>[[x1, y1, …, x4, y4]]</quad>``,
the minimum rotated rectangle's four corners, clockwise as seen in the image, starting at the
corner nearest the top-left) are integers in 0–1000 tile coordinates. "Northernmost" etc. compare
map coordinates, so they stay right for rotated rasters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.affinity import translate
from shapely.geometry.base import BaseGeometry

from vitp_geo.instruct import templates as T
from vitp_geo.instruct.builders.context import BuildContext
from vitp_geo.instruct.builders.labels import PixelLabels, load_pixel_labels
from vitp_geo.instruct.builders.raster_scene import SceneRaster, open_scene
from vitp_geo.instruct.builders.tile_places import Tile, plan_tiles, position_word
from vitp_geo.instruct.records import (
    BOX_SCALE,
    InstructionRecord,
    format_boxes,
    format_grounding,
    normalize_box,
)
from vitp_geo.io.raster import RenderRule


@dataclass
class TileObject:
    """One label polygon as seen in a tile (pixel coordinates of the tile)."""

    index: int  # index into PixelLabels
    cls: str
    visible: BaseGeometry  # the clipped polygon, tile pixel coordinates
    visible_fraction: float
    kept: bool

    @property
    def box(self) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = self.visible.bounds
        return x1, y1, x2, y2


def tile_objects(
    labels: PixelLabels, tree: shapely.STRtree, tile: Tile, min_visible: float
) -> list[TileObject]:
    """Objects touching ``tile`` with the edge rule applied (see module doc), in label order."""
    window = shapely.box(tile.col, tile.row, tile.col + tile.width, tile.row + tile.height)
    out = []
    for i in sorted(int(j) for j in tree.query(window, predicate="intersects")):
        geom = labels.geometries[i]
        clipped = geom.intersection(window)
        if clipped.is_empty or clipped.area <= 0:
            continue
        frac = float(clipped.area / geom.area)
        out.append(
            TileObject(
                i, labels.classes[i], translate(clipped, -tile.col, -tile.row), frac, frac >= min_visible
            )
        )
    return out


def quad_corners(geom: BaseGeometry, width: int, height: int) -> list[int]:
    """Minimum rotated rectangle of ``geom`` → 8 ints in 0–1000 (see module doc for the order)."""
    rect = shapely.minimum_rotated_rectangle(geom)
    pts = (
        np.asarray(rect.exterior.coords)[:4]
        if rect.geom_type == "Polygon"
        else np.asarray([[geom.bounds[0], geom.bounds[1]]] * 4)
    )
    x, y = pts[:, 0], pts[:, 1]
    if 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:  # y points down: >0 is clockwise on screen
        pts = pts[::-1]
    start = int(np.argmin(pts[:, 0] + pts[:, 1]))
    pts = np.roll(pts, -start, axis=0)
    scale = np.array([BOX_SCALE / width, BOX_SCALE / height])
    return [int(v) for v in np.clip(np.round(pts * scale), 0, BOX_SCALE).ravel()]


def _sort_key(obj: TileObject) -> tuple[float, float]:
    x1, y1, _, _ = obj.box
    return (y1, x1)


_REFERRING = ("largest", "smallest", "northernmost", "southernmost", "easternmost", "westernmost")


def _referring_target(
    objs: list[TileObject], which: str, raster: SceneRaster, tile: Tile
) -> TileObject | None:
    """The object ``which`` picks out, or None when the top two are too close to tell apart."""
    if which in ("largest", "smallest"):
        values = np.array([o.visible.area for o in objs])
        sign = 1.0 if which == "largest" else -1.0
        order = np.argsort(-sign * values)
        a, b = values[order[0]], values[order[1]]
        ratio = max(a, b) / max(min(a, b), 1e-9)
        return objs[order[0]] if ratio >= 1.15 else None
    cents = [o.visible.centroid for o in objs]
    pts = np.array([raster.transform @ (c.x + tile.col, c.y + tile.row) for c in cents])  # map coords
    axis, sign = {
        "northernmost": (1, 1),
        "southernmost": (1, -1),
        "easternmost": (0, 1),
        "westernmost": (0, -1),
    }[which]
    values = sign * pts[:, axis]
    order = np.argsort(-values)
    gap = values[order[0]] - values[order[1]]
    return objs[order[0]] if gap >= 3 * np.sqrt(raster.pixel_area) else None


@dataclass
class VectorSource:
    """A georeferenced scene and its vector labels.

    Attributes:
        image: the raster.
        labels: the vector file (any format/CRS geopandas reads).
        class_field: attribute with class names (see ``load_pixel_labels``).
        default_class: class name when there is no class field.
        tile_size, overlap: tiling (see ``plan_tiles``).
        min_visible: edge rule threshold (module doc).
        min_valid: tiles with less than this share of valid (non-nodata) pixels are skipped.
        keep_empty: also write tiles without kept objects (presence "no" questions only).
        rule: how bands become RGB.
        modality: override the detected modality.
    """

    image: Path
    labels: Path
    class_field: str | None = None
    default_class: str = "object"
    tile_size: int = 448
    overlap: float = 0.25
    min_visible: float = 0.5
    min_valid: float = 0.5
    keep_empty: bool = False
    rule: RenderRule = field(default_factory=RenderRule)
    modality: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if not 0 <= self.min_valid <= 1:
            raise ValueError(f"min_valid must be in [0, 1], got {self.min_valid}")

    def build(self, ctx: BuildContext) -> list[InstructionRecord]:
        with open_scene(self.image, self.rule, modality=self.modality) as raster:
            return self._build(ctx, raster)

    def _build(self, ctx: BuildContext, raster: SceneRaster) -> list[InstructionRecord]:
        labels = load_pixel_labels(
            self.labels,
            raster,
            class_field=self.class_field,
            default_class=self.default_class,
            summary=ctx.summary,
        )
        tree = shapely.STRtree(labels.geometries)
        stem = Path(self.image).stem
        records: list[InstructionRecord] = []
        for tile in plan_tiles(raster.height, raster.width, self.tile_size, self.overlap):
            # The labels are asked first: a tile without objects is never read (sparse scenes).
            objs = tile_objects(labels, tree, tile, self.min_visible)
            kept = [o for o in objs if o.kept]
            if not kept and not self.keep_empty:
                ctx.summary.tiles_skipped["no labelled objects"] += 1
                continue
            rgb, valid = raster.read(tile)
            if valid.mean() < self.min_valid:
                ctx.summary.tiles_skipped["mostly nodata"] += 1
                continue
            img = ctx.save_image(
                f"{stem}/{tile.name}.png",
                rgb,
                key=(str(Path(self.image).resolve()), self.rule, tile),
                origin=raster.tile_origin(tile.row, tile.col, tile.height, tile.width),
            )
            ctx.summary.tiles_written += 1
            records += self.tile_records(ctx, raster, labels, tile, objs, img, f"{stem}_{tile.name}")
        return records

    def tile_records(
        self,
        ctx: BuildContext,
        raster: SceneRaster,
        labels: PixelLabels,
        tile: Tile,
        objs: list[TileObject],
        img: str,
        stem: str,
    ) -> list[InstructionRecord]:
        """Every record for one tile (see module doc for the rules)."""
        rng, mod, w, h = ctx.rng, raster.modality, tile.width, tile.height
        kept = sorted((o for o in objs if o.kept), key=_sort_key)
        by_class: dict[str, list[TileObject]] = {}
        for o in kept:
            by_class.setdefault(o.cls, []).append(o)
        ambiguous = {o.cls for o in objs if not o.kept} - set(by_class)
        out: list[InstructionRecord] = []

        def rec(question: str, answer: str, task: str) -> None:
            out.append(ctx.record(stem, [img], question, answer, task, mod))

        for cls, group in sorted(by_class.items()):
            f = T.class_fields(cls)
            boxes = [normalize_box(o.box, w, h) for o in group]
            rec(T.pick(rng, "grounding", **f), format_grounding(cls, boxes), "grounding")
            rec(T.pick(rng, "counting", **f), str(len(group)), "counting")
            quads = [quad_corners(o.visible, w, h) for o in group]
            answer = f"<ref>{cls}</ref><quad>{format_boxes(quads)}</quad>"
            rec(T.pick(rng, "oriented", **f), answer, "oriented")
            if len(group) >= 2:
                for k in rng.permutation(len(_REFERRING)):
                    which = _REFERRING[int(k)]
                    target = _referring_target(group, which, raster, tile)
                    if target is not None:
                        rec(
                            T.pick(rng, "referring", which=which, **f),
                            format_grounding(f"the {which} {f['cls']}", [normalize_box(target.box, w, h)]),
                            "referring",
                        )
                        break
        positives = sorted(by_class)
        negatives = [c for c in labels.vocabulary if c not in by_class and c not in ambiguous]
        for pool, is_present in ((positives, True), (negatives, False)):
            if pool:
                cls = pool[int(rng.integers(len(pool)))]
                rec(T.pick(rng, "presence", **T.class_fields(cls)), T.yes_no(rng, is_present), "presence")
        rec(T.pick(rng, "description"), self._describe(raster, tile, by_class), "description")
        return out

    @staticmethod
    def _describe(raster: SceneRaster, tile: Tile, by_class: dict[str, list[TileObject]]) -> str:
        side_x = tile.width * np.sqrt(raster.pixel_area)
        side_y = tile.height * np.sqrt(raster.pixel_area)
        size = f"{side_x:.0f} × {side_y:.0f} {raster.units}"
        if not by_class:
            return f"This {size} image contains no labelled objects."
        parts = []
        for cls, group in sorted(by_class.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            noun = T.singular(cls) if len(group) == 1 else T.plural(cls)
            words = [
                position_word(o.visible.centroid.x, o.visible.centroid.y, tile.width, tile.height)
                for o in group
            ]
            top = max(set(words), key=lambda wd: (words.count(wd), wd))
            if words.count(top) == len(words):
                where = f"in the {top}"
            elif 2 * words.count(top) > len(words):
                where = f"mostly in the {top}"
            else:
                where = "spread over the image"
            parts.append(f"{len(group)} {noun} {where}")
        return f"This {size} image contains {T.join_words(parts)}."
