"""``infer-catalog --engine ray`` on a local Ray cluster (2 CPUs): equal outputs, a killed worker, a
killed driver (a second driver process on the same cluster, ``--address``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from catalogue_helpers import ExitOnce, done_counts, manifest, read, write_scenes

from vitp_geo.catalogue.runner import EngineChoice, run_catalogue
from vitp_geo.catalogue.sources import read_source
from vitp_geo.cli.main import main
from vitp_geo.inference import InferSettings

ray = pytest.importorskip(
    "ray", reason="the Ray engine needs the cluster extra: pip install 'vitp-geo[cluster]'"
)


@pytest.fixture(scope="module")
def cluster() -> object:
    """One local Ray cluster for the module (start-up takes seconds); the test helpers travel by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules["catalogue_helpers"])
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")  # as import_ray does (see the test below)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_ray_workers_write_what_infer_and_the_local_engine_write(
    cluster: object, world: dict[str, Path], tmp_path: Path
) -> None:
    runs = {}
    for engine in ("ray", "local"):
        out = runs[engine] = tmp_path / engine
        args = [
            "infer-catalog",
            str(world["catalog"]),
            "--checkpoint",
            str(world["ckpt"]),
            "--out-dir",
            str(out),
        ]
        assert main([*args, "--engine", engine, "--workers", "2" if engine == "ray" else "1", "--probabilities", "--no-progress"]) == 0  # fmt: skip
    for i in range(6):
        ray_dir, local_dir = runs["ray"] / "scenes" / f"scene_{i}", runs["local"] / "scenes" / f"scene_{i}"
        for name in ("class_map.tif", "probabilities.tif"):
            np.testing.assert_array_equal(read(ray_dir / name), read(local_dir / name))
        np.testing.assert_array_equal(
            read(ray_dir / "class_map.tif"), read(world["alone"] / f"scene_{i}.tif")
        )
        np.testing.assert_array_equal(
            read(ray_dir / "probabilities.tif"), read(world["alone"] / f"scene_{i}_p.tif")
        )
    done = [r for r in manifest(runs["ray"]) if r["status"] == "done"]
    assert len({r["worker"] for r in done}) == 2  # two actors, each loading the model once, shared the scenes
    assert (
        read(runs["ray"] / "mosaics" / "class_map_epsg32633.vrt").tobytes()
        == read(runs["local"] / "mosaics" / "class_map_epsg32633.vrt").tobytes()
    )


def test_a_ray_worker_that_exits_hard_half_way_resumes_its_scene(
    cluster: object, world: dict[str, Path], tmp_path: Path
) -> None:
    scenes = write_scenes(tmp_path / "mid", 4, (250, 250))  # 3 x 3 windows: 2 model calls a row at batch 2
    tasks = read_source(tmp_path / "mid")
    settings = InferSettings(batch_size=2, checkpoint_every_s=0)
    flag = tmp_path / "exited"
    summary = run_catalogue(
        tasks,
        world["ckpt"],
        tmp_path / "ray",
        settings=settings,
        engine=EngineChoice("ray", workers=2, threads=1),
        module_hook=ExitOnce(flag, after=3),  # one actor exits hard in its first scene's second row
        progress=False,
    )
    assert flag.exists() and not summary.failed and summary.done == 4
    assert (
        run_catalogue(tasks, world["ckpt"], tmp_path / "clean", settings=settings, progress=False).done == 4
    )
    for s in scenes:
        np.testing.assert_array_equal(
            read(tmp_path / "ray" / "scenes" / s.stem / "class_map.tif"),
            read(tmp_path / "clean" / "scenes" / s.stem / "class_map.tif"),
        )
    assert done_counts(tmp_path / "ray") == {s.stem: 1 for s in scenes}  # no scene ran twice to completion
    done = [r for r in manifest(tmp_path / "ray") if r["status"] == "done"]
    resumed = [r for r in done if r["resumed_from_row"] > 0]
    assert len(resumed) == 1  # the dead actor's scene, continued by its restarted actor from the saved row
    assert resumed[0]["worker"].split(":")[1] != flag.read_text()


def _settled_states(out: Path, quiet_s: float = 2.0, timeout_s: float = 60.0) -> list[Path]:
    """The saved window states under ``out`` once none has changed for ``quiet_s`` seconds."""

    def snapshot() -> dict[Path, int]:
        found = {}
        for path in (out / "scenes").glob("*/.class_map.partial.work/state.npz"):
            try:
                found[path] = path.stat().st_mtime_ns
            except FileNotFoundError:  # removed as its scene finished
                pass
        return found

    deadline = time.monotonic() + timeout_s
    last = snapshot()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = snapshot()
        if now == last:
            break
        last = now
    return sorted(last)


def test_a_sigkilled_ray_driver_loses_only_the_scenes_in_flight(
    cluster: object, world: dict[str, Path], tmp_path: Path
) -> None:
    scenes = write_scenes(tmp_path / "big", 3, (840, 400))  # 10 x 5 windows each
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "vitp_geo.cli.main", "infer-catalog", str(tmp_path / "big"), "--checkpoint",
           str(world["ckpt"]), "--no-progress", "--checkpoint-every", "0", "--batch-size", "2"]  # fmt: skip
    ray_args = ["--engine", "ray", "--address", address, "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, *ray_args, "--out-dir", str(out)], env=env, stderr=subprocess.DEVNULL)
    states: list[Path] = []
    deadline = time.monotonic() + 300
    while not states and proc.poll() is None and time.monotonic() < deadline:
        # a scene done and another half way (a window row saved)
        if (out / "manifest.jsonl").exists() and done_counts(out):
            states = list((out / "scenes").glob("*/.class_map.partial.work/state.npz"))
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert states, "the run finished before the kill; make the scenes larger"
    # The driver's actors die shortly after it and may save a row or finish a scene meanwhile:
    # the scenes in flight are those whose saved state outlives them.
    states = _settled_states(out)
    assert states, "no scene was left half way by the kill; make the scenes larger"
    in_flight = {p.parts[-3] for p in states}
    res = subprocess.run([*cmd, *ray_args, "--out-dir", str(out)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (
        subprocess.run([*cmd, "--out-dir", str(tmp_path / "clean")], env=env, capture_output=True).returncode
        == 0
    )
    for s in scenes:
        np.testing.assert_array_equal(
            read(out / "scenes" / s.stem / "class_map.tif"),
            read(tmp_path / "clean" / "scenes" / s.stem / "class_map.tif"),
        )
    assert done_counts(out) == {s.stem: 1 for s in scenes}  # no scene ran twice to completion
    done = {r["scene"]: r for r in manifest(out) if r["status"] == "done"}
    assert all(done[sid]["resumed_from_row"] > 0 for sid in in_flight)  # continued, not restarted


def test_the_ray_engine_leaves_the_callers_print_alone() -> None:
    """Ray's driver swaps builtins.print for its tqdm_ray.safe_print once a bar manager starts;
    after import_ray that patch is off (it had leaked into later tests of this process)."""
    code = (
        "import builtins\n"
        "before = builtins.print\n"
        "from vitp_geo.catalogue.engines import import_ray\n"
        "import_ray()\n"
        "from ray.experimental import tqdm_ray\n"
        "tqdm_ray.instance()\n"
        "print(builtins.print is before)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_TQDM_PATCH_PRINT"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "True"
