"""Before/after images and a change mask → two-image change records.

Both images and the mask (band 1, non-zero = changed) must share one pixel grid. Each tile gives
one record with both images (``Image-1: <image>`` / ``Image-2: <image>``) per question:

- change_yesno: "yes" when ≥ ``min_change`` (default 0.1 %) of the tile changed, "no" at 0 pixels;
  in between the tile is skipped as ambiguous.
- change_where (changed tiles): the boxes of the connected change regions (8-connected, regions
  under ``min_region_pixels`` ignored), ``<ref>changed area</ref><box>[[…]]</box>`` in 0–1000.
- change_area (changed tiles): changed area in CRS units² (pixel count × pixel area) and percent.
- change_caption: share, number of regions and where they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.features import shapes
from shapely.geometry import shape

from vitp_geo.instruct import templates as T
from vitp_geo.instruct.builders.context import BuildContext
from vitp_geo.instruct.builders.raster_scene import (
    LabelRaster,
    SceneRaster,
    check_same_grid,
    open_label_raster,
    open_scene,
)
from vitp_geo.instruct.builders.tile_places import Tile, plan_tiles, position_word
from vitp_geo.instruct.records import InstructionRecord, format_grounding, normalize_box
from vitp_geo.io.raster import RenderRule


def change_regions(changed: np.ndarray, min_pixels: int = 4) -> list[tuple[float, float, float, float]]:
    """Pixel boxes (x1, y1, x2, y2) of the 8-connected regions of a (h, w) bool mask, top-left first."""
    boxes = []
    data = changed.astype(np.uint8)
    for geom, value in shapes(data, mask=changed, connectivity=8):
        if value != 1:
            continue
        poly = shape(geom)
        if poly.area < min_pixels:
            continue
        boxes.append(poly.bounds)
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def _format_area(value: float, units: str) -> str:
    if value >= 1e6 and units == "m":
        return f"{value / 1e6:.2f} km²"
    return f"{value:,.0f} {units}²" if value >= 10 else f"{value:.1f} {units}²"


@dataclass
class ChangeSource:
    """A before/after pair and its change mask."""

    before: Path
    after: Path
    change_mask: Path
    tile_size: int = 448
    overlap: float = 0.0
    min_change: float = 0.001
    min_region_pixels: int = 4
    min_valid: float = 0.5
    rule: RenderRule = field(default_factory=RenderRule)
    modality: str | None = None

    def build(self, ctx: BuildContext) -> list[InstructionRecord]:
        with (
            open_scene(self.before, self.rule, modality=self.modality) as before,
            open_scene(self.after, self.rule, modality=self.modality) as after,
            open_label_raster(self.change_mask) as mask,
        ):
            check_same_grid(before, after)
            check_same_grid(before, mask)
            return self._build(ctx, before, after, mask)

    def _build(
        self, ctx: BuildContext, before: SceneRaster, after: SceneRaster, mask: LabelRaster
    ) -> list[InstructionRecord]:
        stem = f"{Path(self.before).stem}_{Path(self.after).stem}"
        records: list[InstructionRecord] = []
        for tile in plan_tiles(before.height, before.width, self.tile_size, self.overlap):
            values = mask.read(tile)
            counted = values != mask.nodata if mask.nodata is not None else np.ones(values.shape, bool)
            if counted.mean() < self.min_valid:
                ctx.summary.tiles_skipped["mostly nodata"] += 1
                continue  # neither image is read for a tile whose mask is mostly nodata
            rgbs = []
            ok = counted
            for r in (before, after):
                rgb, valid = r.read(tile)
                rgbs.append(rgb)
                ok = ok & valid
            if ok.mean() < self.min_valid:
                ctx.summary.tiles_skipped["mostly nodata"] += 1
                continue
            changed = (values != 0) & ok
            share = float(changed.sum() / ok.sum())
            if 0 < share < self.min_change:
                ctx.summary.tiles_skipped["change below min_change"] += 1
                continue
            imgs = [
                ctx.save_image(
                    f"{stem}/{tag}_{tile.name}.png",
                    rgb,
                    key=(str(Path(r.path).resolve()), self.rule, tile),
                    origin=r.tile_origin(tile.row, tile.col, tile.height, tile.width),
                )
                for tag, r, rgb in (("before", before, rgbs[0]), ("after", after, rgbs[1]))
            ]
            ctx.summary.tiles_written += 1
            records += self._tile_records(ctx, before, tile, changed, share, imgs, f"{stem}_{tile.name}")
        return records

    def _tile_records(
        self,
        ctx: BuildContext,
        ref: SceneRaster,
        tile: Tile,
        changed: np.ndarray,
        share: float,
        imgs: list[str],
        stem: str,
    ) -> list[InstructionRecord]:
        rng, mod = ctx.rng, ref.modality
        out: list[InstructionRecord] = []

        def rec(question: str, answer: str, task: str) -> None:
            out.append(ctx.record(stem, imgs, question, answer, task, mod))

        has_change = share > 0
        rec(T.pick(rng, "change_yesno"), T.yes_no(rng, has_change), "change_yesno")
        if not has_change:
            rec(
                T.pick(rng, "change_caption"),
                "No change is visible between the two images.",
                "change_caption",
            )
            return out
        boxes = change_regions(changed, self.min_region_pixels)
        if boxes:
            rec(
                T.pick(rng, "change_where"),
                format_grounding("changed area", [normalize_box(b, tile.width, tile.height) for b in boxes]),
                "change_where",
            )
        area = float(changed.sum()) * ref.pixel_area
        pct = 100 * share
        rec(
            T.pick(rng, "change_area"),
            f"About {_format_area(area, ref.units)}, {pct:.1f}% of the image.",
            "change_area",
        )
        words = [position_word((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, tile.width, tile.height) for b in boxes]
        n = len(boxes)
        where = f" in the {T.join_words(sorted(set(words)))}" if words and len(set(words)) <= 3 else ""
        regions = f"{n} changed region{'s' if n != 1 else ''}" if n else "scattered changed pixels"
        rec(
            T.pick(rng, "change_caption"),
            f"About {pct:.1f}% of the scene changed: {regions}{where}.",
            "change_caption",
        )
        return out
