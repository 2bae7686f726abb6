"""Every shipped finetune config at full size: the model it builds, and (optionally) one step.

Two measurements, each config in its own process (the parent prints a Markdown table):

* ``build`` (default): every YAML under ``configs/finetune/`` (the paper's 16 benchmarks plus
  Potsdam) builds its task as written, InternViT-300M and all (the deformable ViT-Adapter,
  SimpleFPN, Oriented / Cascade / Mask R-CNN, UperNet), then runs one inference-mode forward
  pass of one image at the config's ``img_size`` (``--no-forward`` skips it). Printed: build
  seconds, forward seconds, peak resident memory, parameter count, the output's shape.
* ``--fit``: the torchgeo-layout configs (LoveDA, Potsdam, LEVIR-CD) as shipped, root filled
  over seeded fixtures in torchgeo 0.8.1's layouts at the datasets' real tile size, under
  ``fast_dev_run`` (one training batch and one validation batch; CPU, fp32)::

    .venv/bin/python benchmarks/paper_configs.py [--only detection/ssdd] [--no-forward]
    .venv/bin/python benchmarks/paper_configs.py --fit [--only segmentation/loveda] [--size 1024]

No pretrained weights are loaded (``backbone.weights: null`` as shipped): this checks that the
full-size models build, fit in memory and run, not what they score. Peak memory is the child
process's maximum resident set (``ru_maxrss``); times depend on the machine's load.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "vitp_geo" / "configs" / "finetune"
SHIPPED = sorted(f"{p.parent.name}/{p.stem}" for p in CONFIGS.glob("*/*.yaml"))
# The configs whose data section reads a torchgeo dataset's own layout (fixtures in tests/data).
FIT = {
    "segmentation/loveda": ("segmentation", "loveda"),
    "segmentation/potsdam": ("segmentation", "potsdam"),
    "change/levircd": ("change", "levircd"),
}


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _build_child(name: str, forward: bool) -> dict[str, Any]:
    """Build ``name``'s task from its ``model`` section as written; one forward pass at its size."""
    import torch
    import yaml

    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]
    module, _, cls = cfg["class_path"].rpartition(".")
    task_cls = getattr(importlib.import_module(module), cls)
    init = dict(cfg["init_args"])
    t0 = time.perf_counter()
    task = task_cls(**init)  # torchgeo's BaseTask builds the model here
    build_s = time.perf_counter() - t0
    model = task.model.eval()
    params = sum(p.numel() for p in model.parameters())
    row: dict[str, Any] = {"config": name, "build_s": round(build_s, 1), "params_m": round(params / 1e6, 1)}
    row["neck"] = type(model.neck).__name__
    if forward:
        size, channels = int(task.hp["img_size"]), int(task.hp["in_channels"])
        if task.KIND == "change":
            channels *= 2  # before and after, stacked
        x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model(x)
        row["forward_s"] = round(time.perf_counter() - t0, 1)
        if isinstance(out, list):  # detections of the one image (an untrained detector finds few)
            row["output"] = {k: list(v.shape) for k, v in out[0].items()}
        else:
            row["output"] = list(out.shape)
    row["peak_gb"] = round(_peak_gb(), 2)
    return row


def _generator(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(f"{name}_data", REPO / "tests" / "data" / name / "data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fit_child(name: str, root: Path, out: Path) -> dict[str, Any]:
    """One torchgeo-layout config under ``fast_dev_run`` in this process."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))  # the config-run helpers the tests use
    from config_runs import CPU_SMOKE_TRAINER, fill_root, finetune_args

    from vitp_geo.cli import finetune
    from vitp_geo.tasks import run as finetune_run

    task = FIT[name][0]
    cfg_file = fill_root(CONFIGS / f"{name}.yaml", root, out.parent / "config.yaml")  # as a user does
    args = finetune_args(task, cfg_file, out)
    finetune.check_args(args)
    run_cfg = finetune.apply_overrides(finetune_run.load_config(args.config), args)
    run_cfg["trainer"].update(CPU_SMOKE_TRAINER)
    t0 = time.perf_counter()
    summary = finetune_run.fit(run_cfg, task, args.output, progress=False, source=str(cfg_file))
    seconds = time.perf_counter() - t0
    state = torch.load(out / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    params = sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k)
    val = {k: v for k, v in summary["validation"].items() if k in ("val_mIoU", "val_F1", "val_loss")}
    return {"config": name, "fit_s": round(seconds, 1), "peak_gb": round(_peak_gb(), 2), "params_m": round(params / 1e6, 1), "validation": val}  # fmt: skip


def _run_child(argv: list[str]) -> tuple[dict[str, Any] | None, str, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        print(res.stderr[-3000:], file=sys.stderr)
        last = res.stderr.strip().splitlines()[-1:] or [f"exit {res.returncode}"]
        return None, last[0], wall
    return json.loads(lines[-1]), "", wall


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=SHIPPED, action="append", help="run only these configs")
    p.add_argument("--no-forward", action="store_true", help="build only, no forward pass")
    p.add_argument(
        "--fit", action="store_true", help=f"fast_dev_run the torchgeo-layout configs ({', '.join(FIT)})"
    )
    p.add_argument(
        "--size", type=int, default=1024, help="--fit: fixture tile side (LoveDA and LEVIR-CD ship 1024)"
    )
    p.add_argument("--child-build", nargs=2, metavar=("NAME", "FORWARD"), help=argparse.SUPPRESS)
    p.add_argument("--child-fit", nargs=3, metavar=("NAME", "ROOT", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_build:
        print(json.dumps(_build_child(args.child_build[0], args.child_build[1] == "1")))
        return
    if args.child_fit:
        print(json.dumps(_fit_child(args.child_fit[0], Path(args.child_fit[1]), Path(args.child_fit[2]))))
        return
    rows = []
    if args.fit:
        names = [n for n in (args.only or FIT) if n in FIT]
        header = "| config | result (full size, 1 train + 1 val batch, CPU fp32) |\n|---|---|"
        with tempfile.TemporaryDirectory(prefix="vitp_paper_configs_") as tmp:
            for name in names:
                root = _generator(FIT[name][1]).write(Path(tmp) / FIT[name][1] / "data", size=args.size)
                r, err, wall = _run_child(
                    ["--child-fit", name, str(root), str(Path(tmp) / FIT[name][1] / "run")]
                )
                rows.append(
                    f"| {name} | failed: {err} |" if r is None else
                    f"| {name} | {r['params_m']} M weights, fit {r['fit_s']} s ({wall:.0f} s with start-up), "
                    f"peak {r['peak_gb']} GB, {r['validation']} |"
                )  # fmt: skip
                print(rows[-1], flush=True)
    else:
        header = (
            "| config | neck | weights | build | forward (1 image, CPU fp32) | output | peak RSS |\n"
            "|---|---|---|---|---|---|---|"
        )
        for name in args.only or SHIPPED:
            r, err, wall = _run_child(["--child-build", name, "0" if args.no_forward else "1"])
            rows.append(
                f"| {name} | failed: {err} |||||" if r is None else
                f"| {name} | {r['neck']} | {r['params_m']} M | {r['build_s']} s | {r.get('forward_s', '-')} s | "
                f"{r.get('output', '-')} | {r['peak_gb']} GB |"
            )  # fmt: skip
            print(rows[-1], flush=True)
    print(f"\n{header}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
