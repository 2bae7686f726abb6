"""``vitp-geo infer-catalog`` with the local engine: outputs, manifest, reruns, failures, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.warp
import rasterio.windows
from catalogue_helpers import SMALL, ExitOnce, done_counts, manifest, read, write_scenes

from vitp_geo.catalogue.runner import EngineChoice, read_card, run_catalogue
from vitp_geo.catalogue.sources import read_source
from vitp_geo.cli.main import main
from vitp_geo.inference import InferSettings


def _catalog(source: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "infer-catalog",
            str(source),
            "--checkpoint",
            str(ckpt),
            "--out-dir",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def test_stac_catalogue_outputs_equal_infer_per_scene_with_stac_and_mosaic(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert _catalog(world["catalog"], world["ckpt"], out, "--probabilities") == 0
    for i in range(6):
        scene = out / "scenes" / f"scene_{i}"
        np.testing.assert_array_equal(read(scene / "class_map.tif"), read(world["alone"] / f"scene_{i}.tif"))
        np.testing.assert_array_equal(
            read(scene / "probabilities.tif"), read(world["alone"] / f"scene_{i}_p.tif")
        )
    # one model load for all scenes: every done record names the same worker (this process)
    records = [r for r in manifest(out) if r["status"] == "done"]
    assert len(records) == 6 and len({r["worker"] for r in records}) == 1
    for r in records:  # outputs recorded with their sizes and checksums
        for e in r["outputs"]:
            assert (out / e["path"]).stat().st_size == e["bytes"] and len(e["sha256"]) == 64
    # the STAC collection: structural check (the JSON schemas are not available offline)
    collection = pystac.read_file(str(out / "stac" / "collection.json"))
    assert isinstance(collection, pystac.Collection)
    items = sorted(collection.get_items(recursive=True), key=lambda it: it.id)
    assert [it.id for it in items] == [f"scene_{i}" for i in range(6)]
    source_items = {it.id: it for it in pystac.read_file(str(world["catalog"])).get_items(recursive=True)}
    for it in items:
        assert set(it.assets) == {"class_map", "probabilities"}
        assert (
            Path(it.assets["class_map"].get_absolute_href()).resolve()
            == (out / "scenes" / it.id / "class_map.tif").resolve()
        )
        derived = [link for link in it.links if link.rel == "derived_from"]
        assert [Path(link.get_absolute_href()).resolve() for link in derived] == [
            Path(source_items[it.id].get_self_href()).resolve()
        ]
        assert world["ckpt"].name in it.properties["processing:lineage"]
        assert it.datetime == source_items[it.id].datetime
        with rasterio.open(it.assets["class_map"].get_absolute_href()) as src:
            b = src.bounds
            lon, lat = rasterio.warp.transform(
                src.crs, "EPSG:4326", [b.left, b.right] * 2, [b.top] * 2 + [b.bottom] * 2
            )
        # the bbox holds the scene's corners, and no more than a hair (densified edges) beyond
        assert (
            it.bbox[0] <= min(lon)
            and it.bbox[2] >= max(lon)
            and it.bbox[1] <= min(lat)
            and it.bbox[3] >= max(lat)
        )
        assert np.allclose(it.bbox, [min(lon), min(lat), max(lon), max(lat)], atol=1e-6)
        assert set(it.to_dict()) >= {
            "type",
            "stac_version",
            "id",
            "geometry",
            "bbox",
            "properties",
            "links",
            "assets",
        }
    # the VRT mosaic: every scene's class map at its place, nodata between, the card's colours
    vrt = out / "mosaics" / "class_map_epsg32633.vrt"
    card = read_card(world["ckpt"])
    with rasterio.open(vrt) as mosaic:
        full = mosaic.read(1)
        assert mosaic.colormap(1)[1][:3] == tuple(card.class_colors[1])
        for i in range(6):
            with rasterio.open(out / "scenes" / f"scene_{i}" / "class_map.tif") as src:
                win = rasterio.windows.from_bounds(*src.bounds, transform=mosaic.transform).round_offsets()
                r0, c0 = int(win.row_off), int(win.col_off)
                np.testing.assert_array_equal(full[r0 : r0 + src.height, c0 : c0 + src.width], src.read(1))
        assert (full[:, SMALL[1] : SMALL[1] + 10] == 255).all()  # the gap between scenes 0 and 1
    assert (out / "mosaics" / "class_map_epsg32633.qml").exists()


def test_rerun_skips_checked_scenes_and_refuses_other_settings(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert _catalog(world["scenes"], world["ckpt"], out) == 0
    before = (out / "manifest.jsonl").read_bytes()
    assert _catalog(world["scenes"], world["ckpt"], out) == 0
    assert (out / "manifest.jsonl").read_bytes() == before  # nothing ran again
    # other settings: refused before anything is touched
    assert _catalog(world["scenes"], world["ckpt"], out, "--overlap", "0.5") == 2
    assert (out / "manifest.jsonl").read_bytes() == before
    # an output that changed since it was written: only that scene runs again, and is restored
    cm = out / "scenes" / "scene_2" / "class_map.tif"
    good = cm.read_bytes()
    cm.write_bytes(good[:-10] + b"0" * 10)
    assert _catalog(world["scenes"], world["ckpt"], out) == 0
    assert done_counts(out) == {f"scene_{i}": 1 + (i == 2) for i in range(6)}
    assert cm.read_bytes() == good


def test_corrupt_scene_fails_alone_and_is_retried_only_when_asked(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(3):
        (folder / f"scene_{i}.tif").write_bytes((world["scenes"] / f"scene_{i}.tif").read_bytes())
    (folder / "broken.tif").write_bytes((world["scenes"] / "scene_3.tif").read_bytes()[:700])
    out = tmp_path / "run"
    assert _catalog(folder, world["ckpt"], out) == 1
    err = capsys.readouterr().err
    assert "1 of 4 scenes failed" in err and "broken" in err
    states = {r["scene"]: r for r in manifest(out)}
    assert states["broken"]["status"] == "failed" and "broken.tif" in states["broken"]["error"]
    assert "\n" not in states["broken"]["error"]
    assert all(states[f"scene_{i}"]["status"] == "done" for i in range(3))
    n = len(manifest(out))
    assert _catalog(folder, world["ckpt"], out) == 1  # not retried: nothing runs
    assert len(manifest(out)) == n
    assert _catalog(folder, world["ckpt"], out, "--retry-failed") == 1  # retried, fails again
    assert [r["status"] for r in manifest(out)[n:]] == ["running", "failed"]


def test_sigkilled_driver_loses_only_the_scene_in_flight_which_resumes(
    world: dict[str, Path], tmp_path: Path
) -> None:
    scenes = write_scenes(tmp_path / "big", 3, (420, 400))  # 5 x 5 windows each
    clean, out = tmp_path / "clean", tmp_path / "killed"
    cmd = [sys.executable, "-m", "vitp_geo.cli.main", "infer-catalog", str(tmp_path / "big"), "--checkpoint",
           str(world["ckpt"]), "--no-progress", "--checkpoint-every", "0", "--batch-size", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([*cmd, "--out-dir", str(out)], env=env, stderr=subprocess.PIPE)
    states: list[Path] = []
    deadline = time.monotonic() + 300
    while not states and proc.poll() is None and time.monotonic() < deadline:
        # the second scene half way: the first is done, the second has saved a window row
        if done_counts(out).get("scene_0", 0) if (out / "manifest.jsonl").exists() else False:
            states = list((out / "scenes").glob("scene_1/.class_map.partial.work/state.npz"))
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert states, "the run finished before the kill; make the scenes larger"
    assert states[0].exists()  # killed while scene_1 was in flight
    assert subprocess.run([*cmd, "--out-dir", str(out)], env=env, capture_output=True).returncode == 0
    assert subprocess.run([*cmd, "--out-dir", str(clean)], env=env, capture_output=True).returncode == 0
    for s in scenes:
        np.testing.assert_array_equal(
            read(out / "scenes" / s.stem / "class_map.tif"), read(clean / "scenes" / s.stem / "class_map.tif")
        )
    assert done_counts(out) == {s.stem: 1 for s in scenes}  # no scene ran twice to completion
    done = {r["scene"]: r for r in manifest(out) if r["status"] == "done"}
    assert done["scene_1"]["resumed_from_row"] > 0  # the interrupted scene resumed, not restarted
    assert done["scene_2"]["resumed_from_row"] == 0
    assert json.loads((out / "run.json").read_text()) == json.loads((clean / "run.json").read_text())


def test_a_dead_pool_worker_loses_only_its_scenes_which_resume(
    world: dict[str, Path], tmp_path: Path
) -> None:
    scenes = write_scenes(tmp_path / "mid", 3, (250, 250))  # 3 x 3 windows: 2 model calls a row at batch 2
    tasks = read_source(tmp_path / "mid")
    settings = InferSettings(batch_size=2, checkpoint_every_s=0)
    flag = tmp_path / "exited"
    out = tmp_path / "pool"
    summary = run_catalogue(
        tasks,
        world["ckpt"],
        out,
        settings=settings,
        engine=EngineChoice("local", workers=2, threads=1),
        module_hook=ExitOnce(flag, after=3),  # one worker exits hard in its first scene's second row
        progress=False,
    )
    assert flag.exists() and not summary.failed and summary.done == 3
    clean = run_catalogue(tasks, world["ckpt"], tmp_path / "clean", settings=settings, progress=False)
    assert clean.done == 3
    for s in scenes:
        np.testing.assert_array_equal(
            read(out / "scenes" / s.stem / "class_map.tif"),
            read(tmp_path / "clean" / "scenes" / s.stem / "class_map.tif"),
        )
    assert done_counts(out) == {s.stem: 1 for s in scenes}
    done = [r for r in manifest(out) if r["status"] == "done"]
    assert any(r["resumed_from_row"] > 0 for r in done)  # the scene of the dead worker resumed
    assert flag.read_text() not in {r["worker"].split(":")[1] for r in done}  # not by the dead process


@pytest.mark.qgis
def test_qgis_opens_the_mosaic_with_the_palette_and_each_scene_in_place(
    world: dict[str, Path], tmp_path: Path
) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("/usr/bin/python3 not found")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    check = subprocess.run(["/usr/bin/python3", "-c", "import qgis.core"], capture_output=True, env=env)
    if check.returncode != 0:
        pytest.skip("/usr/bin/python3 cannot import qgis (apt install python3-qgis)")
    out = tmp_path / "run"
    assert _catalog(world["scenes"], world["ckpt"], out) == 0
    card = read_card(world["ckpt"])
    points, expected = [], []
    for i in (0, 3, 5):  # a pixel centre inside three scenes, and one in the gap after scene 0
        with rasterio.open(out / "scenes" / f"scene_{i}" / "class_map.tif") as src:
            row, col = 17 + i, 23 + 7 * i
            points.append("{},{}".format(*src.xy(row, col)))
            expected.append(int(src.read(1)[row, col]))
    with rasterio.open(world["scenes"] / "scene_0.tif") as src:
        points.append("{},{}".format(*src.xy(5, SMALL[1] + 4)))
    expected.append(None)
    res = subprocess.run(
        ["/usr/bin/python3", str(Path(__file__).with_name("qgis_mosaic_client.py")),
         str(out / "mosaics" / "class_map_epsg32633.vrt"), *points],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["valid"] and report["crs"] == "EPSG:32633" and report["renderer"] == "paletted"
    assert report["width"] == 6 * SMALL[1] + 5 * 10 and report["height"] == SMALL[0]
    colours = ["#{:02x}{:02x}{:02x}".format(*c) for c in card.class_colors]
    assert [(p["value"], p["color"], p["label"]) for p in report["palette"]] == [
        (k, colours[k], card.class_names[k]) for k in range(len(card.class_names))
    ]
    assert report["nodata"] == 255 and report["values"] == expected
    assert not [m for m in report["messages"] if m["level"] >= 1]
