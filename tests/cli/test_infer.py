"""``vitp-geo infer`` end to end with a real tiny checkpoint, on synthetic and real (shared) data."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from tiny_checkpoints import (  # a plain import: a broken module fails these tests
    save_tiny_checkpoint,
    save_tiny_segmentation_checkpoint,
)

import vitp_geo.tasks.loading as loading
from vitp_geo.cli.main import main
from vitp_geo.io.raster import write_geotiff
from vitp_geo.synthetic.scene import generate_scene

TILE = 112


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    save_tiny_segmentation_checkpoint(
        path, tile_size=TILE, mean=[120.0, 110.0, 100.0], std=[50.0, 45.0, 40.0]
    )
    return path


def _infer(scene: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "infer",
            str(scene),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out / "pred.tif"),
            "--no-progress",
            *extra,
        ]
    )


def test_single_window_equals_the_model_on_the_normalised_scene(tmp_path: Path, checkpoint: Path) -> None:
    scene = generate_scene(1, TILE)
    write_geotiff(tmp_path / "scene.tif", scene.image, scene.transform, scene.crs)
    rc = _infer(tmp_path / "scene.tif", checkpoint, tmp_path, "--probabilities", str(tmp_path / "probs.tif"))
    assert rc == 0
    model, card = loading.load_inference_model(checkpoint)
    x = (torch.from_numpy(scene.image).float() - torch.tensor(card.mean)[:, None, None]) / torch.tensor(
        card.std
    )[:, None, None]
    with torch.no_grad():
        expected = torch.softmax(model(x[None]), 1)[0].numpy()
    with rasterio.open(tmp_path / "pred.tif") as pred, rasterio.open(tmp_path / "probs.tif") as probs:
        assert (pred.transform, pred.crs.to_epsg(), pred.shape) == (scene.transform, 32633, (TILE, TILE))
        np.testing.assert_allclose(probs.read(), expected, atol=1e-5)
        np.testing.assert_array_equal(pred.read(1), expected.argmax(0))
        assert pred.colormap(1)[1][:3] == tuple(card.class_colors[1])
    assert (tmp_path / "pred.qml").exists() and (tmp_path / "probs.qml").exists()


def test_multi_window_scene_with_vector(tmp_path: Path, checkpoint: Path) -> None:
    scene = generate_scene(2, (200, 180))
    write_geotiff(tmp_path / "scene.tif", scene.image, scene.transform, scene.crs)
    rc = _infer(
        tmp_path / "scene.tif",
        checkpoint,
        tmp_path,
        "--vector",
        str(tmp_path / "polys.gpkg"),
        "--overlap",
        "0.25",
        "--batch-size",
        "4",
    )
    assert rc == 0
    with rasterio.open(tmp_path / "pred.tif") as pred:
        cls = pred.read(1)
    assert cls.max() < 5  # every pixel predicted (no nodata in the scene)
    frame = gpd.read_file(tmp_path / "polys.gpkg", layer="polys")
    assert frame.pixels.sum() == cls.size and set(frame.class_id) == set(np.unique(cls))
    assert (tmp_path / "polys.qml").exists()


def test_corrupt_scene_fails_cleanly(
    tmp_path: Path, checkpoint: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    # the damaged block is the last one: big windows reach it after three model calls
    rc = _infer(
        shared_data / "corrupt.tif",
        checkpoint,
        out,
        "--vector",
        str(out / "pred.gpkg"),
        "--tile-size",
        "512",
        "--overlap",
        "0",
        "--batch-size",
        "1",
    )
    assert rc != 0
    assert "corrupt.tif" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []  # nothing left behind, not even the work folder


def test_all_nodata_scene_gives_nodata_raster_and_empty_layer(
    tmp_path: Path, checkpoint: Path, shared_data: Path
) -> None:
    rc = _infer(shared_data / "all-nodata.tif", checkpoint, tmp_path, "--vector", str(tmp_path / "v.gpkg"))
    assert rc == 0
    with rasterio.open(tmp_path / "pred.tif") as pred, rasterio.open(shared_data / "all-nodata.tif") as src:
        assert (pred.shape, pred.transform, pred.crs) == (src.shape, src.transform, src.crs)
        assert (pred.read(1) == pred.nodata).all()
    assert len(gpd.read_file(tmp_path / "v.gpkg", layer="v")) == 0


def test_tiny_float_scene_with_odd_crs(tmp_path: Path, checkpoint: Path, shared_data: Path) -> None:
    src_path = shared_data / "float_raster_with_nodata.tif"
    rc = _infer(src_path, checkpoint, tmp_path, "--bands", "1")
    assert rc == 0
    with rasterio.open(tmp_path / "pred.tif") as pred, rasterio.open(src_path) as src:
        assert (pred.shape, pred.transform) == (src.shape, src.transform) and pred.crs == src.crs
        data, cls = src.read(1), pred.read(1)
        nodata = data == np.float32(src.nodata)
        assert nodata.any() and (~nodata).any()
        assert (cls[nodata] == 255).all() and (cls[~nodata] < 5).all()


def test_band_count_mismatch_is_a_clear_error(
    tmp_path: Path, checkpoint: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = _infer(shared_data / "float_raster_with_nodata.tif", checkpoint, tmp_path)
    assert rc == 2
    err = capsys.readouterr().err
    assert "has 1 band(s)" in err and "--bands" in err
    assert not (tmp_path / "pred.tif").exists()


def test_complex_sar_with_rotated_grid_uses_the_db_rule(
    tmp_path: Path, checkpoint: Path, shared_data: Path
) -> None:
    rc = _infer(shared_data / "sar_hh.tif", checkpoint, tmp_path, "--bands", "1", "--tile-size", "112")
    assert rc == 0
    with rasterio.open(tmp_path / "pred.tif") as pred, rasterio.open(shared_data / "sar_hh.tif") as src:
        assert (pred.shape, pred.transform) == (
            src.shape,
            src.transform,
        ) and pred.crs == src.crs  # rotated grid kept
        valid = np.abs(src.read(1)) > 0  # zero amplitude has no dB value: nodata under the rule
        cls = pred.read(1)
        assert (cls[valid] < 5).all() and (cls[~valid] == 255).all()


def test_change_model_reads_both_dates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vitp_geo.synthetic.scene import generate_change_pair, write_change_pair

    ckpt = save_tiny_checkpoint(tmp_path / "change.ckpt", task="change", tile_size=TILE)
    before, after, _ = write_change_pair(generate_change_pair(4, TILE), tmp_path)
    assert _infer(before, ckpt, tmp_path) == 2  # the second date is required
    assert "--after" in capsys.readouterr().err
    assert (
        _infer(before, ckpt, tmp_path, "--after", str(after), "--probabilities", str(tmp_path / "p.tif")) == 0
    )
    model, card = loading.load_inference_model(ckpt)
    mean = torch.tensor(card.mean, dtype=torch.float32)
    std = torch.tensor(card.std, dtype=torch.float32)
    with rasterio.open(before) as b, rasterio.open(after) as a:
        x = torch.cat([torch.from_numpy(b.read()), torch.from_numpy(a.read())]).float()
    if mean.numel() == 3:
        mean, std = mean.repeat(2), std.repeat(2)
    x = (x - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        expected = torch.softmax(model(x[None]), 1)[0].numpy()
    with rasterio.open(tmp_path / "p.tif") as probs:
        np.testing.assert_allclose(probs.read(), expected, atol=1e-5)


def test_two_devices_from_the_cli_write_the_single_device_result(tmp_path: Path, checkpoint: Path) -> None:
    scene = generate_scene(4, (230, 200))
    write_geotiff(tmp_path / "scene.tif", scene.image, scene.transform, scene.crs)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    common = ("--overlap", "0.25", "--probabilities")
    assert _infer(tmp_path / "scene.tif", checkpoint, one, *common, str(one / "p.tif")) == 0
    assert _infer(tmp_path / "scene.tif", checkpoint, two, *common, str(two / "p.tif"), "--devices", "2") == 0
    with rasterio.open(one / "pred.tif") as a, rasterio.open(two / "pred.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert (a.transform, a.crs) == (b.transform, b.crs)
    with rasterio.open(one / "p.tif") as a, rasterio.open(two / "p.tif") as b:
        # Ranks batch different windows together, so float sums may differ in the last bit.
        np.testing.assert_allclose(a.read(), b.read(), rtol=0, atol=1e-6)
    assert not list(two.glob(".*partial*"))  # nothing half-written left behind


def test_raw_band_checkpoint_gets_raw_values_not_the_render_rule(tmp_path: Path, checkpoint: Path) -> None:
    # A model trained on a uint16 scene's own values (card.render raw) must see those values at
    # inference, normalised by the card's statistics, not the percentile-stretched render.
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt["vitp_geo_card"]["render"] = {"raw": True, "dtype": "uint16"}  # as the GeoTIFF datamodules record it
    ckpt["vitp_geo_card"]["mean"] = [1000.0, 1100.0, 1200.0]
    ckpt["vitp_geo_card"]["std"] = [300.0, 300.0, 300.0]
    raw_ckpt = tmp_path / "raw.ckpt"
    torch.save(ckpt, raw_ckpt)
    rng = np.random.default_rng(0)
    image = rng.integers(200, 3000, (3, TILE, TILE)).astype(np.uint16)
    scene = generate_scene(1, TILE)
    write_geotiff(tmp_path / "u16.tif", image, scene.transform, scene.crs)
    probs = tmp_path / "probs.tif"
    assert _infer(tmp_path / "u16.tif", raw_ckpt, tmp_path, "--probabilities", str(probs)) == 0
    model, card = loading.load_inference_model(raw_ckpt)
    x = (torch.from_numpy(image.astype(np.float32)) - torch.tensor(card.mean)[:, None, None]) / torch.tensor(
        card.std
    )[:, None, None]
    with torch.no_grad():
        expected = torch.softmax(model(x[None]), 1)[0].numpy()
    with rasterio.open(probs) as src:
        np.testing.assert_allclose(src.read(), expected, atol=1e-5)


def test_a_scene_of_another_value_type_than_a_raw_band_model_is_refused(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model trained on raw uint8 bands fed a 16-bit scene painted every pixel one class, silently."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["vitp_geo_card"]["render"] = {"raw": True, "dtype": "uint8"}
    raw_ckpt = tmp_path / "raw.ckpt"
    torch.save(ckpt, raw_ckpt)
    scene = generate_scene(1, TILE)
    write_geotiff(tmp_path / "u16.tif", scene.image.astype(np.uint16) * 40, scene.transform, scene.crs)
    assert _infer(tmp_path / "u16.tif", raw_ckpt, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "u16.tif holds uint16 band values but raw.ckpt was trained on raw uint8 values" in err
    assert not (tmp_path / "a").exists()
    write_geotiff(tmp_path / "u8.tif", scene.image, scene.transform, scene.crs)  # the trained type runs
    assert _infer(tmp_path / "u8.tif", raw_ckpt, tmp_path / "b") == 0


def test_help_and_argument_errors_do_not_import_torch() -> None:
    """``vitp-geo infer --help`` answers at once: torch, rasterio and the engine load when a run starts."""
    import subprocess
    import sys

    code = (
        "import sys; from vitp_geo.cli.main import build_parser; build_parser('infer'); "
        "print(sorted(m for m in ('torch', 'rasterio', 'geopandas', 'torchgeo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_loading_a_model_for_inference_does_not_import_torchgeo_or_lightning() -> None:
    """Inference (the medical path included) rebuilds the model without the training stack: torchgeo
    and Lightning cost about 8 s to import and used to load with ``vitp_geo.tasks``."""
    import subprocess
    import sys

    code = (
        "import sys; from vitp_geo.tasks import load_inference_model; import vitp_geo.medical.inference; "
        "import vitp_geo.tiling.engine; "
        "print(sorted(m for m in ('torchgeo', 'lightning', 'kornia') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_stretch_renders_a_uint16_scene_for_a_uint8_trained_model(tmp_path: Path) -> None:
    """Issue 20: a uint8-trained model refused a uint16 scene with no way on. ``--stretch`` reads
    it through the documented render rule: the same class map as a model whose card asks for
    that rule, while the scene without the flag is still refused."""
    scene = generate_scene(1, TILE)
    write_geotiff(tmp_path / "s16.tif", scene.image.astype(np.uint16) * 200, scene.transform, scene.crs)
    stats = dict(tile_size=TILE, mean=[120.0, 110.0, 100.0], std=[50.0, 45.0, 40.0])
    raw = save_tiny_segmentation_checkpoint(tmp_path / "raw.ckpt", render={"raw": True, "dtype": "uint8"}, **stats)
    rendered = save_tiny_segmentation_checkpoint(tmp_path / "rendered.ckpt", **stats)  # same weights
    assert _infer(tmp_path / "s16.tif", raw, tmp_path / "refused") == 2
    assert not (tmp_path / "refused").exists()
    assert _infer(tmp_path / "s16.tif", raw, tmp_path / "a", "--stretch") == 0
    assert _infer(tmp_path / "s16.tif", rendered, tmp_path / "b") == 0
    with rasterio.open(tmp_path / "a" / "pred.tif") as a, rasterio.open(tmp_path / "b" / "pred.tif") as b:
        assert np.array_equal(a.read(), b.read())
