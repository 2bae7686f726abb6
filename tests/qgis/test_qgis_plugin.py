"""The QGIS plugin in real QGIS: ``qgis_process`` (Debian's ``qgis`` package) and PyQGIS Processing.

Every QGIS call runs under a temporary QGIS config folder (``QGIS_CUSTOM_CONFIG_PATH``, ``HOME``
and the XDG folders point into ``tmp_path``), so nothing in the real home is read or written.
The plugin runs the venv's ``vitp-geo`` (set by ``vitp-geo qgis-plugin install --executable``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from load_script import load_script
from tiny_checkpoints import save_tiny_checkpoint

from vitp_geo.cli.main import main

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = Path(__file__).parent
DRIVER = HERE / "plugin_driver.py"
CLIENT = HERE / "qgis_client.py"
VITP_GEO = str(Path(sys.executable).parent / "vitp-geo")
ALGORITHMS = ("vitp:detect_changes", "vitp:detect_objects", "vitp:segment_scene")
TILE = 112


def _qgis_process() -> str | None:
    """A working ``qgis_process``. Debian's wrapper script passes ``--noversioncheck`` (from
    /etc/default/qgis), which QGIS 3.22's ``qgis_process.bin`` refuses; the binary itself works."""
    for name in ("qgis_process", "qgis_process.bin"):
        exe = shutil.which(name)
        if exe is None:
            continue
        res = subprocess.run(
            [exe, "--version"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        )
        if res.returncode == 0 and "QGIS" in res.stdout:
            return exe
    return None


QGIS_PROCESS = _qgis_process()
needs_qgis_process = pytest.mark.skipif(
    QGIS_PROCESS is None, reason="qgis_process not found (Debian: apt install qgis)"
)


def _pyqgis_missing() -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    res = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import qgis.core"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    return None if res.returncode == 0 else f"{SYSTEM_PYTHON} cannot import qgis (apt install python3-qgis)"


PYQGIS_MISSING = _pyqgis_missing()
needs_pyqgis = pytest.mark.skipif(PYQGIS_MISSING is not None, reason=str(PYQGIS_MISSING))


class QgisHome:
    """A throw-away QGIS config folder with one profile, and the environment that points QGIS at it."""

    def __init__(self, root: Path, install: bool = True, executable: str = VITP_GEO) -> None:
        self.root, self.executable = root, executable
        self.config = root / "qgis-config"
        self.profile = self.config / "profiles" / "default"
        self.profile.mkdir(parents=True)
        self.plugins = self.profile / "python" / "plugins"
        home = root / "home"
        for sub in ("", ".local/share", ".config", ".cache", "runtime"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "runtime").chmod(0o700)
        self.env = {
            **os.environ,
            "QT_QPA_PLATFORM": "offscreen",
            "QGIS_CUSTOM_CONFIG_PATH": str(self.config),
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / ".local/share"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_RUNTIME_DIR": str(home / "runtime"),
        }
        if install:
            rc = main(
                [
                    "qgis-plugin",
                    "install",
                    "--profiles-dir",
                    str(self.config / "profiles"),
                    "--executable",
                    executable,
                ]
            )
            assert rc == 0

    def qgis_process(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        assert QGIS_PROCESS is not None
        return subprocess.run(
            [QGIS_PROCESS, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=self.root,
        )

    def run(self, alg: str, **params: object) -> subprocess.CompletedProcess[str]:
        return self.qgis_process("--json", "run", alg, "--", *[f"{k}={v}" for k, v in params.items()])

    def drive(self, runs: list[dict], timeout: float = 400) -> list[dict]:
        """Run ``runs`` through PyQGIS's ``processing.run`` (``plugin_driver.py``)."""
        job = self.root / f"job{len(list(self.root.glob('job*.json')))}.json"
        job.write_text(
            json.dumps({"plugins": str(self.plugins), "executable": self.executable, "runs": runs})
        )
        res = subprocess.run(
            [SYSTEM_PYTHON, str(DRIVER), str(job)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=self.root,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    return {
        "segmentation": save_tiny_checkpoint(  # these statistics give a map of two classes here
            d / "seg.ckpt", tile_size=TILE, num_classes=4, mean=[120.0, 110.0, 100.0], std=[10.0] * 3
        ),
        "detection": save_tiny_checkpoint(d / "det.ckpt", task="detection", tile_size=TILE, num_classes=3),
        "change": save_tiny_checkpoint(d / "chg.ckpt", task="change", tile_size=TILE),
    }


@pytest.fixture
def scenes(tmp_path: Path, shared_data: Path) -> dict[str, Path]:
    """The real RGB scene, an 'after' date on its grid (darker, with a bright block), and crops of
    both (two windows for the detector, slow on a CPU; four for the change model)."""
    d = tmp_path / "scenes"
    d.mkdir()
    before = d / "before.tif"
    shutil.copyfile(shared_data / "RGB.byte.tif", before)
    with rasterio.open(before) as src:
        profile, data = src.profile, src.read()
    after = (data * 0.6).astype(np.uint8)
    after[:, 200:400, 300:500] = 240
    with rasterio.open(d / "after.tif", "w", **profile) as dst:
        dst.write(after)
    crops = {  # name: (source, rows); 200 columns from column 300, across the bright block's edge
        "small": (before, TILE),
        "small_before": (before, 2 * TILE),
        "small_after": (d / "after.tif", 2 * TILE),
    }
    for name, (src_path, rows) in crops.items():
        with rasterio.open(src_path) as src:
            window = rasterio.windows.Window(300, 150, 200, rows)
            crop = dict(profile, width=200, height=rows, transform=src.window_transform(window))
            with rasterio.open(d / f"{name}.tif", "w", **crop) as dst:
                dst.write(src.read(window=window))
    return {k: d / f"{k}.tif" for k in ("before", "after", *crops)}


def _direct(*args: str) -> None:
    """``vitp-geo infer`` run directly (in this process), the reference for the plugin's outputs."""
    assert main(["infer", *args, "--no-progress"]) == 0


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _features(path: Path) -> gpd.GeoDataFrame:
    frame = gpd.read_file(path, layer=path.stem)
    return frame.sort_values(["class_id", "area"], kind="stable").reset_index(drop=True)


def _assert_same_features(a: Path, b: Path, tolerance: float = 0.0) -> None:
    """Same features; ``tolerance`` (map units) for vertices decoded from float boxes (detection)."""
    fa, fb = _features(a), _features(b)
    assert len(fa) == len(fb) > 0
    assert list(fa.columns) == list(fb.columns)
    assert fa.crs == fb.crs
    for col in fa.columns:
        if col == "geometry":
            pairs = zip(fa.geometry, fb.geometry, strict=True)
            assert all(ga.equals_exact(gb, tolerance) for ga, gb in pairs)
        elif fa[col].dtype.kind == "f":  # scores: the same to float32 rounding (see _same_probabilities)
            np.testing.assert_allclose(fa[col].to_numpy(), fb[col].to_numpy(), rtol=1e-5, atol=0, err_msg=col)
        else:
            assert fa[col].tolist() == fb[col].tolist(), col


def _same_probabilities(a: Path, b: Path) -> None:
    """Probabilities equal to float32 rounding: the direct run is in this test process, whose torch
    thread count earlier tests may have changed, and a reduction over another number of threads
    sums in another order (differences of about 1e-7 were seen). Class maps are compared exactly."""
    np.testing.assert_allclose(_pixels(a), _pixels(b), rtol=0, atol=1e-6)


def _one_error_line(output: str, must_contain: str) -> str:
    """The single line of ``output`` with ``must_contain`` (no traceback around it)."""
    assert "Traceback" not in output, output[-3000:]
    lines = [ln for ln in output.splitlines() if must_contain in ln]
    assert lines, output[-3000:]
    assert len(set(lines)) == 1, lines
    return lines[0]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- without QGIS: the install command and the plugin's files --------------------------------


def test_build_zip_holds_the_plugin_and_works_from_a_wheel(tmp_path: Path) -> None:
    """The zip has one top folder with metadata (Processing provider, QGIS 3.22), icon and code; built
    from an unpacked wheel (no source checkout around it), it is the same zip."""
    out = tmp_path / "vitp_geo_qgis.zip"
    assert main(["qgis-plugin", "build", "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as z:
        names = sorted(z.namelist())
        meta = z.read("vitp_geo_qgis/metadata.txt").decode()
        code = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    assert {n.split("/")[0] for n in names} == {"vitp_geo_qgis"}
    assert {"vitp_geo_qgis/__init__.py", "vitp_geo_qgis/icon.svg", "vitp_geo_qgis/provider.py"} <= set(names)
    assert "hasProcessingProvider=yes" in meta.splitlines() and "qgisMinimumVersion=3.22" in meta.splitlines()
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    for name, text in code.items():  # QGIS's Python has none of these
        for banned in ("import torch", "import rasterio", "import vitp_geo", "from vitp_geo"):
            assert banned not in text, (name, banned)
    # a wheel (built from a copy of the sources, so no build/ lands in the checkout), unpacked where
    # no checkout is: the build reads the installed package vitp_geo_qgis
    repo, src = Path(__file__).resolve().parents[2], tmp_path / "src"
    for part in ("vitp_geo", "datamodules", "qgis_plugin"):
        shutil.copytree(repo / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(repo / name, src / name)
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
    )
    site = tmp_path / "site"
    with zipfile.ZipFile(next(wheel_dir.glob("*.whl"))) as z:
        assert {"vitp_geo_qgis/metadata.txt", "vitp_geo_qgis/icon.svg"} <= set(z.namelist())
        z.extractall(site)
    out2 = tmp_path / "from_wheel.zip"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vitp_geo.cli.main import main; sys.exit(main(sys.argv[1:]))",
            "qgis-plugin",
            "build",
            "--out",
            str(out2),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert res.returncode == 0, res.stderr
    assert out2.read_bytes() == out.read_bytes()


def test_install_enables_the_plugin_and_keeps_other_settings(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    ini = profiles / "work" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[General]\nlocale=de\n\n[PythonPlugins]\nprocessing=true\nvitp_geo_qgis=false\n")
    args = ["qgis-plugin", "install", "--profiles-dir", str(profiles), "--profile", "work"]
    assert main([*args, "--executable", "/opt/env one/bin/vitp-geo"]) == 0
    text = ini.read_text()
    assert text.splitlines()[:5] == ["[General]", "locale=de", "", "[PythonPlugins]", "processing=true"]
    assert "vitp_geo_qgis=true" in text.splitlines() and "vitp_geo_qgis=false" not in text
    assert 'Configuration\\VITP_GEO_EXECUTABLE="/opt/env one/bin/vitp-geo"' in text.splitlines()
    assert (profiles / "work" / "python" / "plugins" / "vitp_geo_qgis" / "metadata.txt").is_file()
    assert main([*args, "--executable", VITP_GEO]) == 0  # again: replaced, not duplicated
    assert ini.read_text().count("vitp_geo_qgis=") == 1
    assert _files(profiles / "work" / "python" / "plugins") == ["vitp_geo_qgis"]
    # a profile that does not exist: one error, nothing created
    assert main(["qgis-plugin", "install", "--profiles-dir", str(profiles), "--profile", "nope"]) == 2
    assert _files(profiles) == ["work"]


def _runner() -> ModuleType:
    """The plugin's subprocess runner (standard library only), loaded from the checkout."""
    return load_script("qgis_plugin/vitp_geo_qgis/runner.py", "vitp_geo_qgis_runner")


FAKE_VITP = """#!{python}
import json, signal, sys, time
mode = sys.argv[1]
def stop(signum, frame):
    print(json.dumps({{"phase": "interrupted", "resumable": True, "state": "/s"}}), flush=True)
    sys.exit(130)
signal.signal(signal.SIGINT, signal.SIG_IGN if mode == "stubborn" else stop)
print(json.dumps({{"phase": "load"}}), flush=True)
print("a log line", file=sys.stderr, flush=True)
if mode == "fail":
    print("vitp-geo infer: error: model.ckpt is not a checkpoint", file=sys.stderr)
    sys.exit(2)
for done in range(0, 41, 4):
    print(json.dumps({{"phase": "infer", "done": done, "total": 40, "eta_s": 1.0}}), flush=True)
    time.sleep(0.3 if mode == "stubborn" else 0.05)
print(json.dumps({{"phase": "write"}}), flush=True)
print(json.dumps({{"phase": "done"}}), flush=True)
"""


@pytest.mark.parametrize("mode", ["ok", "fail", "cancel", "stubborn"])
def test_runner_progress_cancel_and_errors(tmp_path: Path, mode: str) -> None:
    """The runner on a stand-in for vitp-geo: progress never goes back and ends at 100 only on
    success; a cancel sends SIGINT (and terminates a process that ignores it); errors are one line."""
    runner = _runner()
    exe = tmp_path / "vitp-geo"
    exe.write_text(FAKE_VITP.format(python=sys.executable))
    exe.chmod(0o755)
    progress: list[float] = []
    phases: list[str] = []
    output: list[str] = []
    pids: list[int] = []
    result = runner.run_vitp(
        [str(exe), mode],
        is_canceled=lambda: mode in ("cancel", "stubborn") and bool(progress) and progress[-1] >= 30,
        on_progress=progress.append,
        on_phase=phases.append,
        on_output=output.append,
        on_started=pids.append,
        stop_grace_s=0.5,
    )
    assert progress == sorted(progress) and not os.path.exists(f"/proc/{pids[0]}")
    assert "a log line" in output
    if mode == "ok":
        assert result.returncode == 0 and progress[-1] == 100 and not result.canceled
        assert phases == [
            "loading the model",
            "running the model over the scene",
            "writing the outputs (COG, GeoPackage, QGIS styles)",
            "done",
        ]
    elif mode == "fail":
        assert (
            result.returncode == 2 and result.error == "vitp-geo infer: error: model.ckpt is not a checkpoint"
        )
        assert max(progress) < 100
    elif mode == "cancel":
        assert result.canceled and result.resumable and result.state == "/s" and result.returncode == 130
        assert 30 <= max(progress) < 100
    else:  # SIGINT ignored: terminated after the grace period, nothing to resume
        assert result.canceled and not result.resumable and result.returncode == -signal.SIGTERM


def test_find_executable_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = _runner()
    with pytest.raises(runner.ExecutableNotFound, match=f"not found: {tmp_path / 'nope'}"):
        runner.find_executable(str(tmp_path / "nope"))
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "vitp-geo").write_text("#!/bin/sh\n")
    (env / "bin" / "vitp-geo").chmod(0o755)
    assert runner.find_executable(str(env)) == str(env / "bin" / "vitp-geo")  # an environment folder
    monkeypatch.setenv("PATH", str(env / "bin"))
    assert runner.find_executable("") == str(env / "bin" / "vitp-geo")  # empty setting: PATH
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runner.ExecutableNotFound, match="not found on PATH"):
        runner.find_executable("  ")
    assert "PYTHONPATH" not in runner.child_environment({"PYTHONPATH": "/usr/share/qgis/python", "A": "1"})


# --- qgis_process --------------------------------------------------------------------------


@pytest.mark.qgis
@needs_qgis_process
def test_qgis_process_enables_and_lists_the_vitp_algorithms(tmp_path: Path) -> None:
    q = QgisHome(tmp_path, install=False)
    out = tmp_path / "p.zip"
    assert main(["qgis-plugin", "build", "--out", str(out)]) == 0
    q.plugins.mkdir(parents=True)
    with zipfile.ZipFile(out) as z:  # what "Install from ZIP" does, without enabling
        z.extractall(q.plugins)
    before = q.qgis_process("list")
    assert before.returncode == 0, before.stderr
    assert "vitp:segment_scene" not in before.stdout
    enable = q.qgis_process("plugins", "enable", "vitp_geo_qgis")
    assert enable.returncode == 0, enable.stdout + enable.stderr
    listed = q.qgis_process("list")
    assert listed.returncode == 0, listed.stderr
    assert [a for a in ALGORITHMS if a in listed.stdout] == list(ALGORITHMS)
    plugins = q.qgis_process("plugins")
    assert "* vitp_geo_qgis" in plugins.stdout  # loaded, and it implements a Processing provider
    helped = q.qgis_process("help", "vitp:segment_scene")
    assert helped.returncode == 0
    for param in ("INPUT:", "CHECKPOINT:", "TILE_SIZE:", "OVERLAP:", "BATCH_SIZE:", "BANDS:", "RESUME:"):
        assert param in helped.stdout
    assert "OUTPUT: Class map" in helped.stdout and "--checkpoint" in helped.stdout


@pytest.mark.qgis
@pytest.mark.slow
@needs_qgis_process
def test_segment_scene_equals_direct_infer_and_opens_styled(
    tmp_path: Path, checkpoints: dict[str, Path], scenes: dict[str, Path]
) -> None:
    q = QgisHome(tmp_path)
    ck, scene = checkpoints["segmentation"], scenes["before"]
    direct = tmp_path / "direct"
    _direct(
        str(scene),
        "--checkpoint",
        str(ck),
        "--out",
        str(direct / "c.tif"),
        "--vector",
        str(direct / "c.gpkg"),
        "--probabilities",
        str(direct / "p.tif"),
        "--batch-size",
        "4",
        "--overlap",
        "0.3",
    )
    via = tmp_path / "via"
    via.mkdir()
    res = q.run(
        "vitp:segment_scene",
        INPUT=scene,
        CHECKPOINT=ck,
        BATCH_SIZE=4,
        OVERLAP=0.3,
        OUTPUT=via / "c.tif",
        PROBABILITIES=via / "p.tif",
        OUTPUT_VECTOR=via / "c.gpkg",
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads(res.stdout)["results"]
    assert results["OUTPUT"] == str(via / "c.tif") and results["OUTPUT_VECTOR"] == str(via / "c.gpkg")
    np.testing.assert_array_equal(_pixels(via / "c.tif"), _pixels(direct / "c.tif"))
    _same_probabilities(via / "p.tif", direct / "p.tif")
    classes = np.unique(_pixels(via / "c.tif"))
    assert len(classes[classes != 255]) >= 2  # a real map, not a constant
    _assert_same_features(via / "c.gpkg", direct / "c.gpkg")
    assert (via / "c.qml").exists() and (via / "p.qml").exists()
    # QGIS opens what the algorithm wrote with infer's styles (the .qml, the gpkg's layer_styles)
    opened = subprocess.run(
        [SYSTEM_PYTHON, str(CLIENT), str(via / "c.tif"), str(via / "c.gpkg"), "c"],
        capture_output=True,
        text=True,
        timeout=240,
        env=q.env,
    )
    assert opened.returncode == 0, opened.stderr[-2000:]
    report = json.loads(opened.stdout.strip().splitlines()[-1])
    assert report["raster"]["renderer"] == "paletted" and len(report["raster"]["palette"]) == 4
    assert report["vector"]["renderer"] == "categorizedSymbol"
    assert report["vector"]["feature_count"] == len(_features(direct / "c.gpkg"))


@pytest.mark.qgis
@pytest.mark.slow
@needs_qgis_process
def test_detect_objects_and_changes_equal_direct_infer(
    tmp_path: Path, checkpoints: dict[str, Path], scenes: dict[str, Path]
) -> None:
    q = QgisHome(tmp_path)
    direct, via = tmp_path / "direct", tmp_path / "via"
    via.mkdir()
    before, after = scenes["small_before"], scenes["small_after"]
    _direct(
        str(scenes["small"]),
        "--checkpoint",
        str(checkpoints["detection"]),
        "--vector",
        str(direct / "d.gpkg"),
        "--min-score",
        "0.05",
    )
    res = q.run(
        "vitp:detect_objects",
        INPUT=scenes["small"],
        CHECKPOINT=checkpoints["detection"],
        MIN_SCORE=0.05,
        OUTPUT=via / "d.gpkg",
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # oriented boxes are decoded in float32 from the same logits: vertices to 1 % of a pixel
    # (the CI run saw last-bit differences, see _same_probabilities)
    with rasterio.open(scenes["small"]) as src:
        pixel = abs(src.transform.a)
    _assert_same_features(via / "d.gpkg", direct / "d.gpkg", tolerance=0.01 * pixel)
    assert (via / "d.qml").exists()  # beside the GeoPackage, as infer writes it

    _direct(
        str(before),
        "--after",
        str(after),
        "--checkpoint",
        str(checkpoints["change"]),
        "--out",
        str(direct / "x.tif"),
        "--vector",
        str(direct / "x.gpkg"),
    )
    res = q.run(
        "vitp:detect_changes",
        INPUT=before,
        INPUT_AFTER=after,
        CHECKPOINT=checkpoints["change"],
        OUTPUT=via / "x.tif",
        OUTPUT_VECTOR=via / "x.gpkg",
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    np.testing.assert_array_equal(_pixels(via / "x.tif"), _pixels(direct / "x.tif"))
    _assert_same_features(via / "x.gpkg", direct / "x.gpkg")


@pytest.mark.qgis
@needs_qgis_process
def test_qgis_process_failures_are_one_line_and_leave_nothing(
    tmp_path: Path, checkpoints: dict[str, Path], scenes: dict[str, Path]
) -> None:
    q = QgisHome(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(checkpoints["segmentation"].read_bytes()[:5000])  # cut short
    res = q.run(
        "vitp:segment_scene",
        INPUT=scenes["before"],
        CHECKPOINT=broken,
        OUTPUT=out / "c.tif",
        OUTPUT_VECTOR=out / "c.gpkg",
    )
    assert res.returncode != 0
    line = _one_error_line(res.stdout + res.stderr, "vitp-geo infer: error:")
    assert "broken.ckpt" in line
    assert _files(out) == []

    scene_copy = out / "scene.tif"
    shutil.copyfile(scenes["before"], scene_copy)
    digest = hashlib.sha256(scene_copy.read_bytes()).hexdigest()
    res = q.run(
        "vitp:segment_scene", INPUT=scene_copy, CHECKPOINT=checkpoints["segmentation"], OUTPUT=scene_copy
    )
    assert res.returncode != 0
    assert "refusing to overwrite an input" in _one_error_line(res.stdout + res.stderr, "refusing")
    assert hashlib.sha256(scene_copy.read_bytes()).hexdigest() == digest
    assert _files(out) == ["scene.tif"]


# --- PyQGIS Processing: cancel and resume, progress, errors ---------------------------------


@pytest.mark.qgis
@pytest.mark.slow
@needs_pyqgis
def test_cancel_half_way_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, checkpoints: dict[str, Path], scenes: dict[str, Path]
) -> None:
    q = QgisHome(tmp_path)
    ck, scene = checkpoints["segmentation"], scenes["before"]
    # small steps (overlap 0.5, two windows per call: 168 windows) so the cancel lands mid-run
    settings = {"INPUT": str(scene), "CHECKPOINT": str(ck), "OVERLAP": 0.5, "BATCH_SIZE": 2}
    via = tmp_path / "via"
    via.mkdir()
    outs = {"OUTPUT": str(via / "c.tif"), "OUTPUT_VECTOR": str(via / "c.gpkg")}
    canceled, resumed = q.drive(
        [
            {"alg": "vitp:segment_scene", "params": {**settings, **outs}, "cancel_at": 40},
            {"alg": "vitp:segment_scene", "params": {**settings, **outs, "RESUME": True}},
        ]
    )
    # the cancel: a failed algorithm that says it can be resumed; the subprocess is gone
    assert canceled["canceled"] and canceled["exception"] is not None
    assert "can be resumed" in canceled["exception"] and "Resume" in canceled["exception"]
    assert canceled["pid"] is not None and not canceled["pid_alive"]
    assert 40 <= max(canceled["progress"]) < 92  # stopped inside the window phase
    assert canceled["progress"] == sorted(canceled["progress"])
    # the resumed run: continues (not from 0), monotonic, reaches 100, outputs loaded from files
    assert resumed["exception"] is None, resumed
    assert "--resume" in resumed["commands"][0]
    assert any("resumed at window row" in line for line in resumed["info"])
    prog = resumed["progress"]
    assert prog == sorted(prog) and prog[-1] == 100
    assert [p for p in prog if p > 4][0] >= 30  # the first window report: where the cancel stopped
    assert {"loading the model", "running the model over the scene"} <= set(resumed["texts"])
    # the same as an uninterrupted run, bit for bit
    direct = tmp_path / "direct"
    _direct(
        str(scene),
        "--checkpoint",
        str(ck),
        "--out",
        str(direct / "c.tif"),
        "--vector",
        str(direct / "c.gpkg"),
        "--overlap",
        "0.5",
        "--batch-size",
        "2",
    )
    np.testing.assert_array_equal(_pixels(via / "c.tif"), _pixels(direct / "c.tif"))
    assert (via / "c.tif").read_bytes() == (direct / "c.tif").read_bytes()
    _assert_same_features(via / "c.gpkg", direct / "c.gpkg")
    assert not list(via.glob(".*.partial.work"))  # the saved state is gone once the run completed


@pytest.mark.qgis
@needs_pyqgis
def test_pyqgis_failures_end_with_one_line_and_nothing_written(
    tmp_path: Path, checkpoints: dict[str, Path], scenes: dict[str, Path]
) -> None:
    q = QgisHome(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    base = {"INPUT": str(scenes["before"]), "CHECKPOINT": str(checkpoints["segmentation"])}
    target = {"OUTPUT": str(out / "c.tif"), "OUTPUT_VECTOR": str(out / "c.gpkg")}
    digest = hashlib.sha256(scenes["before"].read_bytes()).hexdigest()
    ok, missing_exe, no_file, same, damaged, debug = q.drive(
        [
            {"alg": "vitp:segment_scene", "params": {**base, "OUTPUT": str(tmp_path / "ok.tif")}},
            {
                "alg": "vitp:segment_scene",
                "params": {**base, **target},
                "executable": str(tmp_path / "no-env" / "bin" / "vitp-geo"),
            },
            {"alg": "vitp:segment_scene", "params": {**base, **target}, "xyz_input": True},
            {"alg": "vitp:segment_scene", "params": {**base, "OUTPUT": str(scenes["before"])}},
            {"alg": "vitp:segment_scene", "params": {**base, **target, "CHECKPOINT": str(broken)}},
            {
                "alg": "vitp:segment_scene",
                "params": {**base, **target, "CHECKPOINT": str(broken)},
                "debug": True,
            },
        ]
    )
    # a run that works: progress monotonic, to 100, with phase texts
    assert ok["exception"] is None and ok["progress"] == sorted(ok["progress"]) and ok["progress"][-1] == 100
    assert len(ok["progress"]) >= 3 and "writing the outputs (COG, GeoPackage, QGIS styles)" in ok["texts"]
    expected = {
        "missing executable": (missing_exe, "vitp-geo executable not found: " + str(tmp_path / "no-env")),
        "no file source": (no_file, "has no local file (provider 'wms'); export it first"),
        "output is the input": (same, "refusing to overwrite an input"),
        "damaged checkpoint": (damaged, "vitp-geo infer: error:"),
    }
    for case, (report, text) in expected.items():
        msg = report["exception"]
        assert msg is not None and text in msg, (case, msg)
        assert "\n" not in msg.strip(), (case, msg)
        assert report["errors"] and report["errors"][-1] == msg, (case, report["errors"])
        assert report["results"] is None, case
    assert "broken.ckpt" in damaged["exception"]
    assert damaged["pid"] is not None and not damaged["pid_alive"]
    assert missing_exe["pid"] is None and no_file["pid"] is None  # nothing was started
    assert _files(out) == []
    assert hashlib.sha256(scenes["before"].read_bytes()).hexdigest() == digest  # the input is untouched
    # the debug setting: --debug is passed and its traceback goes to the log; the error stays one line
    assert "--debug" in debug["commands"][0] and "--debug" not in damaged["commands"][0]
    assert any(line.startswith("Traceback") for line in debug["info"])
    assert not any(line.startswith("Traceback") for line in damaged["info"])
    assert debug["exception"] == damaged["exception"]
