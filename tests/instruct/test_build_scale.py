"""build-instructions on a sparse 50 000 × 50 000 scene: read window by window, never whole.

The scene holds 3 × 50 000² uint8 values (7 GB as one array) but only a 2048² patch is written;
the rest is sparse (no blocks on disk, nodata). The builder runs in a subprocess whose address
space is capped at 3 GB: reading the whole raster, as the builders once did, fails there with
``Unable to allocate 6.98 GiB``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from shapely.geometry import box

N = 50_000
ROW0, COL0, PATCH = 20_000, 30_000, 2048
LIMIT = 3 * 1024**3


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse")
    t = Affine(0.5, 0, 500_000.0, 0, -0.5, 4_000_000.0)
    common = dict(
        driver="GTiff", width=N, height=N, crs="EPSG:32633", transform=t, dtype="uint8",
        tiled=True, blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 255, (3, PATCH, PATCH), dtype=np.uint8)
    window = ((ROW0, ROW0 + PATCH), (COL0, COL0 + PATCH))
    with rasterio.open(d / "scene.tif", "w", count=3, nodata=0, **common) as dst:
        dst.write(pixels, window=window)
    mask = np.zeros((PATCH, PATCH), np.uint8)
    mask[200:900, 300:1200] = 1
    with rasterio.open(d / "mask.tif", "w", count=1, nodata=255, **common) as dst:
        dst.write(mask[None], window=window)
    (d / "classes.yaml").write_text("0: background\n1: building\n")
    x0, y0 = t @ (COL0, ROW0)
    houses = [
        box(x0 + 20 + 30 * i, y0 - 32 - 30 * j, x0 + 32 + 30 * i, y0 - 20 - 30 * j)
        for i in range(30)
        for j in range(30)
    ]
    gpd.GeoDataFrame({"class_name": ["building"] * len(houses)}, geometry=houses, crs="EPSG:32633").to_file(
        d / "houses.gpkg", driver="GPKG"
    )
    assert (d / "scene.tif").stat().st_size < 50 * 1024**2  # sparse on disk
    return d, pixels


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _build(args: list[str]) -> subprocess.CompletedProcess:
    code = "import sys; from vitp_geo.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "build-instructions", *args],
        capture_output=True,
        text=True,
        preexec_fn=_capped,
        timeout=600,
    )


def _check_tiles(out, pixels) -> list[dict]:
    lines = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert lines
    seen = set()
    for rec in lines:
        col, row, w, h = rec["origin"]["window"]
        # every tile lies on the written patch (the rest of the scene is nodata)
        assert COL0 - w < col < COL0 + PATCH and ROW0 - h < row < ROW0 + PATCH, rec["origin"]
        if rec["image"] in seen:
            continue
        seen.add(rec["image"])
        img = np.asarray(Image.open(out / rec["image"])).transpose(2, 0, 1)
        # the tile's pixels are the scene's own (uint8 is kept as it is), nodata rendered 0
        expected = np.zeros((3, h, w), np.uint8)
        r0, c0 = max(row, ROW0), max(col, COL0)
        r1, c1 = min(row + h, ROW0 + PATCH), min(col + w, COL0 + PATCH)
        expected[:, r0 - row : r1 - row, c0 - col : c1 - col] = pixels[
            :, r0 - ROW0 : r1 - ROW0, c0 - COL0 : c1 - COL0
        ]
        np.testing.assert_array_equal(img, expected)
    return lines


def test_vector_labels_on_a_sparse_50000_square_scene(tmp_path, sparse):
    d, pixels = sparse
    res = _build(
        ["--image", str(d / "scene.tif"), "--labels", str(d / "houses.gpkg"), "--out", str(tmp_path / "c")]
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = _check_tiles(tmp_path / "c", pixels)
    assert {r["task"] for r in lines} >= {"counting", "grounding"}


def test_mask_labels_on_a_sparse_50000_square_scene(tmp_path, sparse):
    d, pixels = sparse
    res = _build(
        ["--image", str(d / "scene.tif"), "--mask", str(d / "mask.tif"), "--classes", str(d / "classes.yaml")]
        + ["--out", str(tmp_path / "c")]
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = _check_tiles(tmp_path / "c", pixels)
    present = [r for r in lines if r["task"] == "presence" and "building" in r["conversations"][0]["value"]]
    assert present
