"""Does ViTP pretraining help downstream? Same fine-tuning budget from three starting points.

On a generated segmentation task (the shared synthetic world, written as GeoTIFFs and read by
the GeoTIFF datamodule), fine-tune the same UperNet model for the same number of steps from:

  (a) the backbone written by the default ``vitp-geo pretrain --domain rs`` (VRL on),
  (b) random initialisation,
  (c) the backbone of ``vitp-geo pretrain --domain rs --vrl-ratio 0`` (VRL off),

and print the validation mIoU of each, side by side, with the gain over (b).

    python benchmarks/pretrain_gain.py --work /tmp/gain            # runs both pretrainings first
    python benchmarks/pretrain_gain.py --vrl-backbone A --no-vrl-backbone C   # reuse backbones

Every run uses the same seed, data, tiles and schedule; only the initial backbone differs.
Repeat with ``--seeds 0 1 2`` to see the spread (the figures on a tiny model are noisy).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def pretrain(out: Path, extra: list[str]) -> Path:
    """Run ``vitp-geo pretrain --domain rs --output out`` (+ extra flags); returns the backbone path."""
    weights = out / "backbone.safetensors"
    if weights.is_file():
        print(f"reusing {weights}")
        return weights
    cmd = [
        sys.executable,
        "-m",
        "vitp_geo.cli.main",
        "pretrain",
        "--domain",
        "rs",
        "--output",
        str(out),
        *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"  pretraining took {time.time() - start:.0f} s")
    if not weights.is_file():
        raise FileNotFoundError(f"pretraining finished but wrote no {weights}")
    return weights


def finetune(
    backbone: Path | None,
    data: Path,
    steps: int,
    seed: int,
    work: Path,
    lr: float = 1e-3,
    layer_decay: float = 0.9,
) -> float:
    """Fine-tune for ``steps`` steps and return the validation mIoU."""
    import lightning
    import torch

    from datamodules.geotiff import GeoTiffSegmentationDataModule
    from vitp_geo.synthetic import CLASS_NAMES
    from vitp_geo.tasks import SegmentationTask

    lightning.seed_everything(seed, verbose=False)
    dm = GeoTiffSegmentationDataModule(
        str(data / "images"),
        labels=str(data / "labels"),
        patch_size=112,
        batch_size=8,
        length=steps * 8,
        val_fraction=0.25,
        seed=seed,
    )
    task = SegmentationTask(
        backbone="vitp_tiny_patch14_112",
        backbone_weights=str(backbone) if backbone else None,
        img_size=112,
        num_classes=len(CLASS_NAMES),
        class_names=list(CLASS_NAMES),
        head_channels=64,
        lr=lr,
        layer_decay=layer_decay,
        warmup_steps=5,
        schedule="poly",
        drop_path_rate=0.0,
    )
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
        num_sanity_val_steps=0,
        default_root_dir=work,
    )
    trainer.fit(task, datamodule=dm)
    result = trainer.validate(task, datamodule=dm, verbose=False)[0]
    torch.set_grad_enabled(True)
    return float(result["val_mIoU"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("pretrain_gain_work"))
    p.add_argument("--vrl-backbone", type=Path, help="reuse a backbone for (a) instead of pretraining")
    p.add_argument("--no-vrl-backbone", type=Path, help="reuse a backbone for (c) instead of pretraining")
    p.add_argument("--steps", type=int, default=60, help="fine-tuning steps (batch 8, 112 px tiles)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (all three starts)")
    p.add_argument("--layer-decay", type=float, default=0.9, help="layer-wise lr decay (all three starts)")
    p.add_argument(
        "--pretrain-args", nargs=argparse.REMAINDER, default=[], help="extra flags for both pretrainings"
    )
    args = p.parse_args()

    from datamodules.synthetic_geotiff import write_synthetic_segmentation

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    if not (data / "images").is_dir():
        write_synthetic_segmentation(
            data, n_scenes=4, size=336, seed=1000
        )  # scenes unseen in pretraining seeds
    vrl = args.vrl_backbone or pretrain(args.work / "pretrain_vrl", list(args.pretrain_args))
    no_vrl = args.no_vrl_backbone or pretrain(
        args.work / "pretrain_no_vrl", ["--vrl-ratio", "0", *args.pretrain_args]
    )

    starts = {"(a) ViTP, VRL on": vrl, "(b) random init": None, "(c) ViTP, VRL off": no_vrl}
    scores: dict[str, list[float]] = {k: [] for k in starts}
    for seed in args.seeds:
        for name, backbone in starts.items():
            print(f"\n== {name}, seed {seed}", flush=True)
            scores[name].append(
                finetune(backbone, data, args.steps, seed, args.work / "runs", args.lr, args.layer_decay)
            )

    base = sum(scores["(b) random init"]) / len(args.seeds)
    print(
        f"\nvalidation mIoU after {args.steps} fine-tuning steps at lr {args.lr}, "
        f"layer decay {args.layer_decay} (seeds {args.seeds}):"
    )
    print(f"{'start':<22}{'mIoU':>8}{'vs random':>11}   per seed")
    for name, values in scores.items():
        mean = sum(values) / len(values)
        ratio = mean / base if base > 0 else float("nan")
        print(f"{name:<22}{mean:>8.4f}{ratio:>10.3f}x   {', '.join(f'{v:.4f}' for v in values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
