"""The streaming engine end to end with models whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from toy_models import (
    N_CLASSES,
    InterruptAfter,
    PixelModel,
    PositionModel,
    pixel_function,
    reference_blend,
    write_test_scene,
)

from vitp_geo.io.qgis_styles import ClassStyle
from vitp_geo.synthetic.scene import CLASS_COLORS, CLASS_NAMES
from vitp_geo.tiling.distributed import RankInfo, spawn_ranks
from vitp_geo.tiling.engine import EngineConfig, segment_scene
from vitp_geo.tiling.resume import work_dir_for
from vitp_geo.tiling.segmentation_outputs import SegmentationOutputs

CLASSES = ClassStyle(CLASS_NAMES, CLASS_COLORS)
CFG = EngineConfig(tile_size=64, overlap=0.25, batch_size=3, activation="none", progress=False)


def _run(scene: Path, out: Path, model=None, **kw) -> object:
    outputs = SegmentationOutputs(out / "pred.tif", out / "probs.tif", kw.pop("vector", None))
    return segment_scene(scene, model or PixelModel(), CLASSES, outputs, config=kw.pop("config", CFG), **kw)


def test_known_function_comes_back_across_seams(tmp_path: Path) -> None:
    img = write_test_scene(tmp_path / "scene.tif", (150, 170), nodata_box=(0, 64, 40, 120))
    summary = _run(tmp_path / "scene.tif", tmp_path)
    expected = pixel_function(img[0].astype(np.float32) / 255.0)  # (K, H, W)
    nodata = (img == 0).all(axis=0)
    with (
        rasterio.open(tmp_path / "pred.tif") as pred,
        rasterio.open(tmp_path / "probs.tif") as probs,
        rasterio.open(tmp_path / "scene.tif") as src,
    ):
        assert (pred.crs, pred.transform, pred.width, pred.height) == (
            src.crs,
            src.transform,
            src.width,
            src.height,
        )
        cls, p = pred.read(1), probs.read()
        assert pred.nodata == 255 and pred.colormap(1)[1] == (*CLASS_COLORS[1], 255)
        assert probs.count == N_CLASSES and probs.dtypes[0] == "float32"
    # blended probabilities equal the function at every valid pixel, seams and shifted edges included
    np.testing.assert_allclose(p[:, ~nodata], expected[:, ~nodata], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cls[~nodata], expected.argmax(0)[~nodata])
    # nodata pixels get no vote: nodata in every output
    assert (cls[nodata] == 255).all() and np.isnan(p[:, nodata]).all()
    # the window at rows 0-64, cols 48-112 is all nodata and was skipped, not run
    assert summary.windows_skipped == 1 and summary.windows_run == summary.windows_total - 1
    assert not work_dir_for(tmp_path / "pred.tif").exists()
    aux = (tmp_path / "pred.tif.aux.xml").read_text()
    assert all(f"<Category>{n}</Category>" in aux for n in CLASS_NAMES)


def test_cog_has_overviews_for_bigger_scenes(tmp_path: Path) -> None:
    write_test_scene(tmp_path / "scene.tif", (700, 300))
    _run(
        tmp_path / "scene.tif",
        tmp_path,
        config=EngineConfig(tile_size=256, overlap=0.1, activation="none", progress=False),
    )
    with rasterio.open(tmp_path / "pred.tif") as pred:
        assert pred.overviews(1) and pred.profile["blockxsize"] == 512
        assert pred.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    write_test_scene(tmp_path / "scene.tif", (200, 190), nodata_box=(70, 140, 0, 60))
    (tmp_path / "a").mkdir()
    _run(tmp_path / "scene.tif", tmp_path / "a")
    cfg = EngineConfig(**{**CFG.__dict__, "checkpoint_every_s": 0.0})
    b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "scene.tif", b, model=InterruptAfter(PixelModel(), 5), config=cfg)
    assert not (b / "pred.tif").exists() and not (b / "probs.tif").exists()  # nothing under a final name
    assert work_dir_for(b / "pred.tif").exists()
    summary = _run(tmp_path / "scene.tif", b, config=cfg, resume=True)
    assert summary.resumed_from_row > 0  # it continued, it did not start over
    for name in ("pred.tif", "probs.tif"):
        assert (tmp_path / "a" / name).read_bytes() == (b / name).read_bytes()


def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    write_test_scene(tmp_path / "scene.tif", (130, 130))
    cfg = EngineConfig(**{**CFG.__dict__, "checkpoint_every_s": 0.0})
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "scene.tif", tmp_path, model=InterruptAfter(PixelModel(), 2), config=cfg)
    other = EngineConfig(**{**cfg.__dict__, "overlap": 0.5})
    with pytest.raises(ValueError, match="cannot resume"):
        _run(tmp_path / "scene.tif", tmp_path, config=other, resume=True)


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_refused_or_failed_resume_keeps_the_saved_state(tmp_path: Path) -> None:
    write_test_scene(tmp_path / "scene.tif", (200, 190), nodata_box=(70, 140, 0, 60))
    (tmp_path / "a").mkdir()
    _run(tmp_path / "scene.tif", tmp_path / "a")
    cfg = EngineConfig(**{**CFG.__dict__, "checkpoint_every_s": 0.0})
    b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "scene.tif", b, model=InterruptAfter(PixelModel(), 5), config=cfg)
    work = work_dir_for(b / "pred.tif")
    saved = _folder_bytes(work)
    assert "state.npz" in saved
    # a mistyped --batch-size is part of the fingerprint: refused, and the state is untouched
    typo = EngineConfig(**{**cfg.__dict__, "batch_size": 4})
    with pytest.raises(ValueError, match="cannot resume"):
        _run(tmp_path / "scene.tif", b, config=typo, resume=True)
    assert _folder_bytes(work) == saved
    # an error during an accepted resume (here a broken model) does not wipe it either

    def broken(x: object) -> object:
        raise ValueError("model failed")

    with pytest.raises(ValueError, match="model failed"):
        _run(tmp_path / "scene.tif", b, model=broken, config=cfg, resume=True)
    assert work.is_dir() and {"meta.json", "state.npz"} <= set(saved) <= {f.name for f in work.iterdir()}
    # and the right settings still continue it to the same bytes as an uninterrupted run
    summary = _run(tmp_path / "scene.tif", b, config=cfg, resume=True)
    assert summary.resumed_from_row > 0
    for name in ("pred.tif", "probs.tif"):
        assert (tmp_path / "a" / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize("damage", ["class-raw-truncated", "probs-raw-altered", "state-truncated"])
def test_resume_verifies_the_saved_state_before_trusting_it(tmp_path: Path, damage: str) -> None:
    """A raw file shorter than the recorded rows (it used to be zero-filled, exit 0), a raw file whose
    rows changed, or a cut-off state.npz: refused with a message naming the file, every file kept."""
    write_test_scene(tmp_path / "scene.tif", (200, 190))
    cfg = EngineConfig(**{**CFG.__dict__, "checkpoint_every_s": 0.0})
    b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "scene.tif", b, model=InterruptAfter(PixelModel(), 5), config=cfg)
    work = work_dir_for(b / "pred.tif")
    if damage == "class-raw-truncated":
        raw = work / "class.raw"
        raw.write_bytes(raw.read_bytes()[:-190])  # one row short
        match = r"class\.raw holds .* bytes, but the saved state records"
    elif damage == "probs-raw-altered":
        raw = work / "probs.raw"
        data = bytearray(raw.read_bytes())
        data[100] ^= 0xFF
        raw.write_bytes(bytes(data))
        match = r"probs\.raw differ from what the saved state recorded"
    else:
        state = work / "state.npz"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        match = r"state\.npz is damaged"
    saved = _folder_bytes(work)
    with pytest.raises(ValueError, match=match):
        _run(tmp_path / "scene.tif", b, config=cfg, resume=True)
    assert _folder_bytes(work) == saved and not (b / "pred.tif").exists()


def test_rerun_without_resume_says_it_discards_the_partial_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_test_scene(tmp_path / "scene.tif", (130, 130))
    cfg = EngineConfig(**{**CFG.__dict__, "checkpoint_every_s": 0.0})
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "scene.tif", tmp_path, model=InterruptAfter(PixelModel(), 2), config=cfg)
    with caplog.at_level("WARNING", logger="vitp_geo.tiling.resume"):
        summary = _run(tmp_path / "scene.tif", tmp_path, config=cfg)
    assert summary.resumed_from_row == 0
    assert any(
        "discarding the partial run" in r.getMessage()
        and str(work_dir_for(tmp_path / "pred.tif")) in r.getMessage()
        for r in caplog.records
    )


def test_resume_without_saved_state_says_it_starts_from_the_beginning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 20: ``--resume`` with nothing saved started afresh without saying so."""
    write_test_scene(tmp_path / "scene.tif", (130, 130))
    with caplog.at_level("WARNING", logger="vitp_geo.tiling.resume"):
        summary = _run(tmp_path / "scene.tif", tmp_path, resume=True)
    assert summary.resumed_from_row == 0 and (tmp_path / "pred.tif").exists()
    assert any(
        "--resume: no interrupted run to continue" in r.getMessage()
        and str(work_dir_for(tmp_path / "pred.tif")) in r.getMessage()
        for r in caplog.records
    )


def test_outputs_never_replace_the_scene_or_each_other(tmp_path: Path) -> None:
    write_test_scene(tmp_path / "scene.tif", (64, 64))
    scene = (tmp_path / "scene.tif").read_bytes()
    clashes = [
        (
            SegmentationOutputs(tmp_path / "scene.tif"),
            "class map .*scene.tif is the same file as the input scene",
        ),
        (SegmentationOutputs(tmp_path / "p.tif", tmp_path / "p.tif"), "class map and probabilities"),
        (SegmentationOutputs(tmp_path / "p.tif", tmp_path / "p.tiff"), r"p\.qml"),  # one style file for both
        (SegmentationOutputs(tmp_path / "p.tif", None, tmp_path / "scene.tif"), "vector .*input scene"),
    ]
    for outputs, message in clashes:
        with pytest.raises(ValueError, match=message):
            segment_scene(tmp_path / "scene.tif", PixelModel(), CLASSES, outputs, config=CFG)
    assert (tmp_path / "scene.tif").read_bytes() == scene
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]  # nothing started


def test_vector_sharing_the_probabilities_stem_keeps_its_style_apart(tmp_path: Path) -> None:
    write_test_scene(tmp_path / "scene.tif", (64, 64))
    outputs = SegmentationOutputs(tmp_path / "pred.tif", tmp_path / "probs.tif", tmp_path / "probs.gpkg")
    segment_scene(tmp_path / "scene.tif", PixelModel(), CLASSES, outputs, config=CFG)
    from vitp_geo.io.qgis_styles import categorized_qml, gray_qml

    assert (tmp_path / "probs.qml").read_text() == gray_qml()  # QGIS loads it for probs.tif
    assert (tmp_path / "probs_vector.qml").read_text() == categorized_qml(CLASSES)


def test_rotated_geotransform_is_kept_exactly(tmp_path: Path) -> None:
    path = tmp_path / "rotated.tif"
    t = Affine(0.5, 0.1, 500000.0, 0.1, -0.5, 5e6)  # rotated: everything stays on the pixel grid
    img = write_test_scene(tmp_path / "north_up.tif", (80, 90))
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=90,
        height=80,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=t,
        nodata=0,
    ) as dst:
        dst.write(img)
    _run(path, tmp_path, vector=tmp_path / "v.gpkg")
    with rasterio.open(tmp_path / "pred.tif") as pred:
        assert pred.transform == t and pred.crs.to_epsg() == 32633
        np.testing.assert_array_equal(pred.read(1), pixel_function(img[0] / 255.0).argmax(0))
    import geopandas as gpd

    frame = gpd.read_file(tmp_path / "v.gpkg", layer="v")
    np.testing.assert_allclose(
        frame.geometry.area.sum(), 80 * 90 * abs(t.determinant)
    )  # polygons rotated too


def test_wrong_score_channels_is_a_clear_error(tmp_path: Path) -> None:
    write_test_scene(tmp_path / "scene.tif", (64, 64))
    with pytest.raises(ValueError, match=r"expected \(B, 5, 64, 64\)"):
        _run(tmp_path / "scene.tif", tmp_path, model=lambda x: x[:, :2])


def test_vector_layer_matches_class_map(tmp_path: Path) -> None:
    import geopandas as gpd

    write_test_scene(tmp_path / "scene.tif", (150, 170), nodata_box=(0, 40, 0, 40))
    _run(tmp_path / "scene.tif", tmp_path, vector=tmp_path / "pred.gpkg")
    frame = gpd.read_file(tmp_path / "pred.gpkg", layer="pred")
    with rasterio.open(tmp_path / "pred.tif") as pred:
        cls, px_area = pred.read(1), abs(pred.transform.a * pred.transform.e)
        assert frame.crs == pred.crs
    for k in range(N_CLASSES):  # every pixel of every class is in exactly one polygon
        sel = frame[frame.class_id == k]
        assert sel.pixels.sum() == (cls == k).sum()
        np.testing.assert_allclose(sel.geometry.area.sum(), (cls == k).sum() * px_area)
        np.testing.assert_allclose(sel.area, sel.geometry.area)
        assert (sel.class_name == CLASS_NAMES[k]).all()
    assert frame.score.between(0, 1).all()


def _rank_job(args: tuple[str, str], rank: RankInfo) -> None:
    scene, out = args
    segment_scene(
        scene,
        PixelModel(),
        CLASSES,
        SegmentationOutputs(Path(out) / "pred.tif", Path(out) / "probs.tif"),
        config=EngineConfig(tile_size=64, overlap=0.25, batch_size=2, activation="none", progress=False),
        rank=rank,
    )


@pytest.mark.slow
def test_two_ranks_give_the_single_process_result(tmp_path: Path) -> None:
    import functools

    write_test_scene(tmp_path / "scene.tif", (150, 200), nodata_box=(0, 64, 0, 64))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _rank_job((str(tmp_path / "scene.tif"), str(tmp_path / "one")), RankInfo())
    spawn_ranks(functools.partial(_rank_job, (str(tmp_path / "scene.tif"), str(tmp_path / "two"))), 2)
    for name in ("pred.tif", "probs.tif"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_stretch_is_scene_wide_not_per_window(tmp_path: Path) -> None:
    from vitp_geo.io.raster import render_rgb

    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 300.0, (1, 130, 150)).astype(np.uint16)
    data[:, :, 75:] *= 20  # the right half is much brighter: per-window percentiles would differ
    data[:, :5, :5] = 0
    path = tmp_path / "u16.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=150,
        height=130,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=Affine(1, 0, 500000, 0, -1, 5e6),
        nodata=0,
    ) as dst:
        dst.write(data)
    _run(path, tmp_path)
    rgb, valid = render_rgb(data, 0)  # the rule applied to the whole scene at once
    expected = pixel_function(rgb[0].astype(np.float32) / 255.0)
    with rasterio.open(tmp_path / "probs.tif") as probs:
        np.testing.assert_allclose(probs.read()[:, valid], expected[:, valid], rtol=1e-5, atol=1e-6)


def test_two_band_uint8_is_stretched_scene_wide(tmp_path: Path) -> None:
    # Two bands become (b1, b2, b1 - b2) and are stretched even for uint8: one stretch for the scene.
    from vitp_geo.io.raster import render_rgb

    rng = np.random.default_rng(1)
    data = rng.integers(1, 120, (2, 130, 150)).astype(np.uint8)
    data[0, :, 75:] += 120  # the right half of band 1 is brighter: per-window limits would differ
    path = tmp_path / "dual.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=150, height=130, count=2, dtype="uint8",
        crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 5e6),
    ) as dst:  # fmt: skip
        dst.write(data)
    _run(path, tmp_path)
    rgb, _ = render_rgb(data)
    expected = pixel_function(rgb[0].astype(np.float32) / 255.0)
    with rasterio.open(tmp_path / "probs.tif") as probs:
        np.testing.assert_allclose(probs.read(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [((600, 600), 512, 0.25), ((64, 200), 64, 0.25)],
    ids=["last-window-shifted-far", "one-tile-tall"],
)
def test_blend_ramp_is_the_nominal_overlap(
    tmp_path: Path, size: tuple[int, int], tile: int, overlap: float
) -> None:
    """A model with spatial context: the blend must use ramps of ``tile − stride`` on both axes.

    At 600 px with 512-px tiles the second row starts 88 px down (a 424-px overlap), which must not
    widen the 128-px ramp; a one-tile-tall scene still ramps between its columns.
    """
    write_test_scene(tmp_path / "scene.tif", size)
    cfg = EngineConfig(tile_size=tile, overlap=overlap, batch_size=2, activation="none", progress=False)
    _run(tmp_path / "scene.tif", tmp_path, model=PositionModel(), config=cfg)
    with rasterio.open(tmp_path / "probs.tif") as probs:
        p = probs.read().astype(np.float64)
    np.testing.assert_allclose(p, reference_blend(*size, tile, overlap), rtol=1e-5, atol=1e-5)


def _disk_full_in_the_geopackage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the GeoPackage writer fail as a full disk does: part of the file written, then ENOSPC."""
    import errno

    import vitp_geo.io.qgis_styles as styles

    def full(frame: object, path: object, **kw: object) -> None:
        Path(str(path)).write_bytes(b"SQLite format 3\0" + b"\0" * 4096)  # the cut-off start of a file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(styles.pyogrio, "write_dataframe", full)


def test_full_disk_while_writing_the_geopackage_leaves_no_output_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test_scene(tmp_path / "scene.tif", (150, 170))
    (tmp_path / "a").mkdir()
    _run(tmp_path / "scene.tif", tmp_path / "a", vector=tmp_path / "a" / "pred.gpkg")
    b = tmp_path / "b"
    b.mkdir()
    with monkeypatch.context() as m:
        _disk_full_in_the_geopackage(m)
        with pytest.raises(OSError, match=r"No space left on device.*no output was written.*--resume"):
            _run(tmp_path / "scene.tif", b, vector=b / "pred.gpkg")
    # no class map without its vector layer, no orphan style, no partial file
    assert sorted(p.name for p in b.iterdir()) == [work_dir_for(b / "pred.tif").name]

    # the finished inference is kept: --resume writes the outputs without running the model
    def refuse(x: object) -> object:
        raise AssertionError("the model ran again")

    summary = _run(tmp_path / "scene.tif", b, model=refuse, vector=b / "pred.gpkg", resume=True)
    assert summary.windows_run == 0
    for name in ("pred.tif", "probs.tif", "pred.qml", "probs.qml"):
        assert (tmp_path / "a" / name).read_bytes() == (b / name).read_bytes(), name
    import geopandas as gpd

    pa, pb = (
        gpd.read_file(tmp_path / "a" / "pred.gpkg", layer="pred"),
        gpd.read_file(b / "pred.gpkg", layer="pred"),
    )
    assert len(pa) == len(pb) > 0 and pa.geometry.geom_equals(pb.geometry).all()


def test_failed_overwrite_keeps_the_earlier_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun that replaces earlier outputs and fails half way leaves every earlier file as it was."""
    write_test_scene(tmp_path / "scene.tif", (96, 96))
    _run(tmp_path / "scene.tif", tmp_path, vector=tmp_path / "pred.gpkg")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"pred.tif", "pred.tif.aux.xml", "pred.qml", "probs.tif", "pred.gpkg"} <= set(before)
    with monkeypatch.context() as m:
        _disk_full_in_the_geopackage(m)
        with pytest.raises(OSError, match="No space left"):
            _run(tmp_path / "scene.tif", tmp_path, model=PositionModel(), vector=tmp_path / "pred.gpkg")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before


def test_full_disk_while_the_cog_is_written_gives_the_resume_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: GDAL's full-disk error while the COG was written was a CPLE_AppDefinedError
    traceback, without the designed "--resume" message."""
    from rasterio._err import CPLE_AppDefinedError

    import vitp_geo.io.cog as cog

    write_test_scene(tmp_path / "scene.tif", (150, 170))
    (tmp_path / "a").mkdir()
    _run(tmp_path / "scene.tif", tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()

    def full(*args: object, **kw: object) -> None:
        raise CPLE_AppDefinedError(1, 1, "TIFFAppendToStrip:Write error at scanline 0: No space left on device")

    with monkeypatch.context() as m:
        m.setattr(cog.rasterio.shutil, "copy", full)
        with pytest.raises(OSError, match=r"writing .*pred\.tif failed: .*No space left.*no output was written.*--resume"):
            _run(tmp_path / "scene.tif", b)
    assert sorted(p.name for p in b.iterdir()) == [work_dir_for(b / "pred.tif").name]
    _run(tmp_path / "scene.tif", b, resume=True)
    for name in ("pred.tif", "probs.tif"):
        with rasterio.open(tmp_path / "a" / name) as x, rasterio.open(b / name) as y:
            assert np.array_equal(x.read(), y.read(), equal_nan=True)


@pytest.mark.parametrize("saved", [False, True])
def test_full_disk_in_the_window_pass_names_the_work_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved: bool
) -> None:
    """Issue 20: a full disk during the window pass was "[Errno 28]" with no path, and left a work
    folder without state.npz holding the disk. Now the folder is named; it is kept only with a
    saved state, and --resume then finishes the run."""
    import errno

    from vitp_geo.tiling.rowsink import RawRowSink

    write_test_scene(tmp_path / "scene.tif", (150, 170))
    cfg = EngineConfig(**{**CFG.__dict__, "checkpoint_every_s": 0.0 if saved else 3600.0})
    real_commit, calls = RawRowSink.commit, []

    def commit(self: RawRowSink, upto_row: int) -> None:
        calls.append(upto_row)
        if len(calls) > 4:  # two rows of windows done (class map and probabilities each)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_commit(self, upto_row)

    with monkeypatch.context() as m:
        m.setattr(RawRowSink, "commit", commit)
        with pytest.raises(OSError) as err:
            _run(tmp_path / "scene.tif", tmp_path, config=cfg)
    work = work_dir_for(tmp_path / "pred.tif")
    assert f"writing {work} failed (No space left on device)" in str(err.value)
    if not saved:
        assert "before any state was saved; it was removed" in str(err.value)
        assert not work.exists() and not (tmp_path / "pred.tif").exists()
        return
    assert "rerun with --resume" in str(err.value) and (work / "state.npz").exists()
    summary = _run(tmp_path / "scene.tif", tmp_path, config=cfg, resume=True)
    assert summary.resumed_from_row > 0
    (tmp_path / "ref").mkdir()
    _run(tmp_path / "scene.tif", tmp_path / "ref", config=cfg)
    with rasterio.open(tmp_path / "ref" / "pred.tif") as x, rasterio.open(tmp_path / "pred.tif") as y:
        assert np.array_equal(x.read(), y.read())


def _failing_rank_job(info: RankInfo) -> None:
    if info.rank == 1:
        raise ValueError("boom on rank 1")


def test_a_failed_rank_is_reported_with_its_own_error() -> None:
    # the ranks meet at a barrier before leaving the process group; the barrier's failure on the
    # healthy rank must not hide the failed rank's own error
    with pytest.raises(RuntimeError, match="an inference rank failed: ValueError: boom on rank 1"):
        spawn_ranks(_failing_rank_job, 2)
