"""``infer-catalog --engine ray --address`` on a cluster started by ``ray start --head`` (its own process
tree, as a user's cluster is), not by ``ray.init`` in the test process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from catalogue_helpers import manifest, read

pytest.importorskip("ray", reason="the Ray engine needs the cluster extra: pip install 'vitp-geo[cluster]'")


# Loopback only (Ray otherwise turns 127.0.0.1 into the machine's routable address), and no token
# authentication: a private test cluster (a driver given an explicit address of a cluster that uses
# tokens needs RAY_AUTH_MODE=token, as Ray asks of every such driver).
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(sys.path),
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ours(temp_dir: str) -> list[psutil.Process]:
    """The processes of the cluster this test started (their command lines name its temp dir)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def head_node() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``ray start --head --block`` in a subprocess (2 CPUs, its own temp dir and ports): its address
    and that process.

    Stopped by killing, by their ids, that process and every process it started (``ray start``'s own
    SIGTERM drains for 30 s), plus any process whose command line names the cluster's temp dir;
    never ``ray stop``, which stops every Ray cluster on the machine.
    """
    temp_dir = tempfile.mkdtemp(prefix="vitpray", dir="/tmp")  # short: Ray's socket paths are limited
    port = _free_port()
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1",
          "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited {head.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("ray start --head: the cluster did not come up in 60 s")
        yield address, head
    finally:
        tree: list[psutil.Process] = []
        try:
            root = psutil.Process(head.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:  # it exited (and was reaped) by itself
            pass
        tree += [p for p in _ours(temp_dir) if p not in tree]
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_infer_catalog_runs_on_a_cluster_started_by_ray_start(
    head_node: tuple[str, subprocess.Popen[bytes]], world: dict[str, Path], tmp_path: Path
) -> None:
    address, head = head_node
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "vitp_geo.cli.main", "infer-catalog", str(world["catalog"]), "--checkpoint",
         str(world["ckpt"]), "--out-dir", str(out), "--no-progress", "--engine", "ray", "--address", address,
         "--workers", "2"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert head.poll() is None  # the driver is gone; the cluster is the user's and goes on
    for i in range(6):
        np.testing.assert_array_equal(
            read(out / "scenes" / f"scene_{i}" / "class_map.tif"), read(world["alone"] / f"scene_{i}.tif")
        )
    done = [r for r in manifest(out) if r["status"] == "done"]
    workers = {r["worker"] for r in done}
    # two actors of that cluster, each with its model loaded once
    assert len(done) == 6 and len(workers) == 2
