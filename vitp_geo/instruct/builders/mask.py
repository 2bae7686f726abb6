"""Segmentation mask raster → presence, classes, dominant-class, area-share and region records.

The mask (band 1, integer class ids) must lie on the image's pixel grid. ``names.yaml`` maps ids
to names, as a mapping (``{0: background, 1: building}``), a list (index = id) or either of those
under a ``classes:`` key. Pixels equal to the mask's nodata value, or to ``ignore_index``, are not
counted. A class named ``background`` is reported in area shares but never asked about.

Rules per tile (shares are of the counted pixels):

- presence: a class is present at ≥ ``min_share`` (default 0.5 %), absent at 0 pixels; in
  between it is not asked about.
- classes: the present classes in class-id order ("building, road and water."), asked only when
  every class is clearly present or absent (none lies between 0 and ``min_share``).
- dominant: asked only when the top class leads the second by ≥ 5 percentage points.
- area share: every class at ≥ 1 %, largest first, rounded to whole percent.
- region: for one named region (``tiles.REGIONS``, e.g. "top-left quadrant") the non-background
  classes with ≥ ``min_share`` of that region's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vitp_geo.instruct import templates as T
from vitp_geo.instruct.builders.context import BuildContext
from vitp_geo.instruct.builders.raster_scene import (
    LabelRaster,
    SceneRaster,
    check_same_grid,
    open_label_raster,
    open_scene,
)
from vitp_geo.instruct.builders.tile_places import REGIONS, plan_tiles, region_slices
from vitp_geo.instruct.records import InstructionRecord
from vitp_geo.io.raster import RenderRule

BACKGROUND = "background"


def load_class_names(path: str | Path) -> dict[int, str]:
    """Read ``names.yaml`` (see module doc) as ``{id: name}``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"class names file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"cannot parse class names {path}: {err}") from err
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if isinstance(data, list):
        data = dict(enumerate(data))
    if not isinstance(data, dict) or not data:
        raise ValueError(f"class names {path} must be a non-empty mapping id → name or a list of names")
    out: dict[int, str] = {}
    for k, v in data.items():
        try:
            out[int(k)] = str(v)
        except (TypeError, ValueError) as err:
            raise ValueError(f"class names {path}: id {k!r} is not an integer") from err
    return out


def _fmt_pct(share: float) -> str:
    pct = 100 * share
    return f"{pct:.0f}%" if pct >= 1 else "<1%"


@dataclass
class MaskSource:
    """An image and its segmentation mask on the same grid."""

    image: Path
    mask: Path
    classes: Path | dict[int, str]
    tile_size: int = 448
    overlap: float = 0.25
    min_share: float = 0.005
    min_valid: float = 0.5
    ignore_index: int | None = 255
    rule: RenderRule = field(default_factory=RenderRule)
    modality: str | None = None

    def build(self, ctx: BuildContext) -> list[InstructionRecord]:
        names = self.classes if isinstance(self.classes, dict) else load_class_names(self.classes)
        with (
            open_scene(self.image, self.rule, modality=self.modality) as raster,
            open_label_raster(self.mask) as mask,
        ):
            check_same_grid(raster, mask)
            return self._build(ctx, raster, mask, names)

    def _build(
        self, ctx: BuildContext, raster: SceneRaster, mask: LabelRaster, names: dict[int, str]
    ) -> list[InstructionRecord]:
        ids = sorted(names)
        lut = np.full(max(ids) + 1, -1, np.int64)
        for j, cid in enumerate(ids):
            lut[cid] = j
        known = np.zeros(max(ids) + 1, bool)
        known[ids] = True
        where = self.classes if not isinstance(self.classes, dict) else "the class table"
        stem = Path(self.image).stem
        records: list[InstructionRecord] = []
        for tile in plan_tiles(raster.height, raster.width, self.tile_size, self.overlap):
            values = mask.read(tile)
            counted = np.ones(values.shape, bool)
            if mask.nodata is not None:
                counted &= values != mask.nodata
            if self.ignore_index is not None:
                counted &= values != self.ignore_index
            seen = values[counted]
            bad = (seen < 0) | (seen > max(ids))
            bad[~bad] = ~known[seen[~bad].astype(np.int64)]
            if bad.any():
                unknown = sorted(np.unique(seen[bad]).tolist())
                raise ValueError(
                    f"mask {self.mask} has class value(s) {unknown[:10]} not listed in {where} "
                    f"(first seen in the tile at row {tile.row}, column {tile.col})"
                )
            if not counted.any() or counted.mean() < self.min_valid:
                ctx.summary.tiles_skipped["mostly nodata"] += 1
                continue  # the image is not read for a tile whose labels are mostly uncounted
            rgb, valid = raster.read(tile)
            ok = counted & valid
            if ok.mean() < self.min_valid:
                ctx.summary.tiles_skipped["mostly nodata"] += 1
                continue
            m = np.where(ok, lut[np.clip(values, 0, lut.size - 1).astype(np.int64)], -1)
            img = ctx.save_image(
                f"{stem}/{tile.name}.png",
                rgb,
                key=(str(Path(self.image).resolve()), self.rule, tile),
                origin=raster.tile_origin(tile.row, tile.col, tile.height, tile.width),
            )
            ctx.summary.tiles_written += 1
            records += self._tile_records(
                ctx, m, [names[i] for i in ids], img, f"{stem}_{tile.name}", raster.modality
            )
        return records

    def _tile_records(
        self, ctx: BuildContext, m: np.ndarray, names: list[str], img: str, stem: str, modality: str
    ) -> list[InstructionRecord]:
        """``m`` is (h, w) of indexes into ``names`` with −1 for uncounted pixels."""
        rng = ctx.rng
        out: list[InstructionRecord] = []

        def rec(question: str, answer: str, task: str) -> None:
            out.append(ctx.record(stem, [img], question, answer, task, modality))

        n = int((m >= 0).sum())
        shares = np.bincount(m[m >= 0], minlength=len(names)) / max(n, 1)
        askable = [j for j, name in enumerate(names) if name != BACKGROUND]
        present = [j for j in askable if shares[j] >= self.min_share]
        absent = [j for j in askable if shares[j] == 0]
        for pool, is_present in ((present, True), (absent, False)):
            if pool:
                j = pool[int(rng.integers(len(pool)))]
                rec(
                    T.pick(rng, "presence", **T.class_fields(names[j])), T.yes_no(rng, is_present), "presence"
                )
        # classes: every present class in id order, asked only when no class is in the ambiguous
        # band between absent and min_share (the same rule as presence).
        if all(j in present or j in absent for j in askable):
            listed_present = [names[j] for j in present]
            answer = T.join_words(listed_present) + "." if listed_present else "None."
            rec(T.pick(rng, "classes"), answer, "classes")
        order = np.argsort(-shares, kind="stable")
        if len(names) >= 2 and shares[order[0]] - shares[order[1]] >= 0.05:
            rec(T.pick(rng, "dominant"), T.singular(names[order[0]]), "dominant")
        listed = [f"{names[j]}: {_fmt_pct(shares[j])}" for j in order if shares[j] >= 0.01]
        rec(T.pick(rng, "area_share"), ", ".join(listed) + ".", "area_share")
        region = list(REGIONS)[int(rng.integers(len(REGIONS)))]
        rs = region_slices(region, *m.shape)
        sub = m[rs]
        sub_n = max(int((sub >= 0).sum()), 1)
        sub_shares = np.bincount(sub[sub >= 0], minlength=len(names)) / sub_n
        touching = [names[j] for j in askable if sub_shares[j] >= self.min_share]
        answer = T.join_words(touching) + "." if touching else "None."
        rec(T.pick(rng, "region", region=region), answer, "region")
        return out
