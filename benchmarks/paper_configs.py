"""The torchgeo-layout paper configs at full size: one training step and one validation batch.

The tests run ``configs/finetune/{segmentation/loveda,segmentation/potsdam,change/levircd}.yaml``
as shipped but with the tiny backbone (the suite must stay fast). This script runs them with
everything as shipped (InternViT-300M in the ViT-Adapter, UperNet, the configs' crop sizes and
batch sizes) over seeded fixtures in torchgeo 0.8.1's layouts at the datasets' real tile size,
under ``fast_dev_run`` (one training batch, one validation batch). The CPU overrides are the
trainer's ``accelerator: cpu``, ``devices: 1`` and ``precision: 32-true`` (the configs ask for
bf16-mixed on GPUs). Each config runs in its own process; it prints wall time, peak memory and
the parameter count::

    .venv/bin/python benchmarks/paper_configs.py [--only loveda] [--size 1024]

No pretrained weights are loaded (``backbone_weights: null`` as shipped): this checks that the
full-size model builds, fits in memory and trains on the real layout, not what it scores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "vitp_geo" / "configs" / "finetune"
SHIPPED = {
    "loveda": ("segmentation", CONFIGS / "segmentation" / "loveda.yaml"),
    "potsdam": ("segmentation", CONFIGS / "segmentation" / "potsdam.yaml"),
    "levircd": ("change", CONFIGS / "change" / "levircd.yaml"),
}


def _generator(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(f"{name}_data", REPO / "tests" / "data" / name / "data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(name: str, root: Path, out: Path) -> None:
    """One config in this process (called by the parent with --child)."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))  # the config-run helpers the tests use
    from config_runs import CPU_SMOKE_TRAINER, fill_root, finetune_args

    from vitp_geo.cli import finetune
    from vitp_geo.tasks import run as finetune_run

    task, shipped = SHIPPED[name]
    cfg_file = fill_root(shipped, root, out.parent / f"{name}.yaml")  # the one thing a user fills in
    args = finetune_args(task, cfg_file, out)
    finetune.check_args(args)
    run_cfg = finetune.apply_overrides(finetune_run.load_config(args.config), args)
    run_cfg["trainer"].update(CPU_SMOKE_TRAINER)
    t0 = time.perf_counter()
    summary = finetune_run.fit(run_cfg, task, args.output, progress=False, source=str(cfg_file))
    seconds = time.perf_counter() - t0
    state = torch.load(out / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    params = sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    val = {k: v for k, v in summary["validation"].items() if k in ("val_mIoU", "val_F1", "val_loss")}
    print(json.dumps({"config": name, "seconds": round(seconds, 1), "peak_gb": round(peak_gb, 2), "params_m": round(params / 1e6, 1), "validation": val}))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(SHIPPED), action="append", help="run only these configs")
    p.add_argument("--size", type=int, default=1024, help="fixture tile side (LoveDA and LEVIR-CD ship 1024)")
    p.add_argument("--child", nargs=3, metavar=("NAME", "ROOT", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitp_paper_configs_") as tmp:
        for name in args.only or sorted(SHIPPED):
            root = _generator(name).write(Path(tmp) / name / "data", size=args.size)
            t0 = time.perf_counter()
            res = subprocess.run(
                [sys.executable, __file__, "--child", name, str(root), str(Path(tmp) / name / "run")],
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
            lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
            if res.returncode != 0 or not lines:
                rows.append(
                    f"| {name} | failed (exit {res.returncode}) | {res.stderr.strip().splitlines()[-1:]} |"
                )
                print(res.stderr[-3000:], file=sys.stderr)
                continue
            r = json.loads(lines[-1])
            rows.append(
                f"| {name} | {SHIPPED[name][1].relative_to(REPO / 'vitp_geo')} | passes: {r['params_m']} M weights, "
                f"fit {r['seconds']} s ({wall:.0f} s with start-up), peak {r['peak_gb']} GB, {r['validation']} |"
            )
            print(rows[-1], flush=True)
    print("\n| dataset | config | result (full size, 1 train + 1 val batch, CPU fp32) |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
