"""Seeded scenes, a pystac catalogue of them, a worker-killing model hook, and output readers."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.warp
import torch

from vitp_geo.io.raster import write_geotiff
from vitp_geo.synthetic.scene import generate_scene

PIXEL = 0.5
TILE = 112  # the tiny checkpoint's window
SMALL = (150, 130)  # 2 x 2 windows of 112 px at overlap 0.25
ORIGIN = (500000.0, 5000000.0)


def write_scenes(folder: Path, n: int, size: tuple[int, int], *, gap: int = 10) -> list[Path]:
    """``n`` seeded scenes side by side on one UTM grid (``gap`` pixels apart), as GeoTIFFs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    h, w = size
    for i in range(n):
        origin = (ORIGIN[0] + i * (w + gap) * PIXEL, ORIGIN[1])
        s = generate_scene(100 + i, size, pixel_size=PIXEL, origin=origin)
        paths.append(write_geotiff(folder / f"scene_{i}.tif", s.image, s.transform, s.crs))
    return paths


def write_stac_catalog(folder: Path, scenes: list[Path], asset: str = "image") -> Path:
    """A self-contained pystac catalogue with one item per scene (asset ``asset``)."""
    cat = pystac.Catalog(id="test-scenes", description="seeded scenes")
    for p in scenes:
        with rasterio.open(p) as src:
            b = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        item = pystac.Item(
            id=p.stem,
            geometry={
                "type": "Polygon",
                "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]],
            },
            bbox=list(b),
            datetime=datetime(2024, 5, 1, tzinfo=UTC),
            properties={},
        )
        item.add_asset("thumbnail", pystac.Asset(href=str(p.with_suffix(".png")), media_type="image/png"))
        item.add_asset(asset, pystac.Asset(href=str(p.resolve()), media_type=pystac.MediaType.GEOTIFF))
        cat.add_item(item)
    cat.normalize_hrefs(str(folder / "stac"))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "stac" / "catalog.json"


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def manifest(out_dir: Path) -> list[dict]:
    return [
        json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines() if line.strip()
    ]


def done_counts(out_dir: Path) -> Counter[str]:
    return Counter(r["scene"] for r in manifest(out_dir) if r.get("status") == "done")


class ExitOnce:
    """A module hook: the worker process exits hard (``os._exit``) at its ``after``-th model call,
    once across all workers (a flag file), as a killed or crashed worker would."""

    def __init__(self, flag: Path, after: int) -> None:
        self.flag, self.after = flag, after

    def __call__(self, module: torch.nn.Module) -> torch.nn.Module:
        return _ExitingModule(module, self.flag, self.after)


class _ExitingModule(torch.nn.Module):
    def __init__(self, module: torch.nn.Module, flag: Path, after: int) -> None:
        super().__init__()
        self.inner, self.flag, self.after, self.calls = module, str(flag), after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.after and not os.path.exists(self.flag):
            Path(self.flag).write_text(str(os.getpid()))
            os._exit(137)
        return self.inner(x)
