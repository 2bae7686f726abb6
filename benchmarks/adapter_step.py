"""Deformable ViT-Adapter against the global-attention one: forward + backward time and memory.

Both adapters wrap the same ViT (default the tiny ``vitp_tiny_patch14_112``; ``--arch`` for
another) and run one training step (forward, a scalar loss over the four maps, backward) on a
batch of random images at each ``--sizes`` side. Printed per size: median step time over
``--repeat`` steps after one warm-up, and the peak memory of the step (CUDA's allocator on a GPU;
on the CPU the growth of the process's peak resident set, measured in a fresh subprocess per
setting), then the ratio deformable / global.

Run alone (torch jobs on a shared CPU slow each other many times over):

    python benchmarks/adapter_step.py [--sizes 512 1024] [--batch 1] [--repeat 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _one(neck: str, size: int, batch: int, repeat: int, device: str, arch: str) -> dict[str, float]:
    import resource

    import torch

    sys.path.insert(0, str(REPO))
    from vitp_geo.tasks.backbone import build_backbone
    from vitp_geo.tasks.models import build_neck

    torch.manual_seed(0)
    model = build_neck(build_backbone(arch, img_size=112), neck, None).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        sum(o.float().square().mean() for o in model(x)).backward()

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        mem = torch.cuda.max_memory_allocated() / 2**20
    else:  # peak RSS of this fresh process (the warm-up step included)
        mem = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base) / 1024
    return {"seconds": statistics.median(times), "memory_mb": mem}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="vitp_tiny_patch14_112")
    p.add_argument("--child", nargs=2, metavar=("NECK", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        neck, size = args.child
        print(json.dumps(_one(neck, int(size), args.batch, args.repeat, args.device, args.arch)))
        return
    print(
        f"{args.arch}, batch {args.batch}, {args.device}; median of {args.repeat} steps (forward + backward)"
    )
    for size in args.sizes:
        row = {}
        for neck in ("adapter", "deformable_adapter"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    neck,
                    str(size),
                    "--batch",
                    str(args.batch),
                    "--repeat",
                    str(args.repeat),
                    "--device",
                    args.device,
                    "--arch",
                    args.arch,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            row[neck] = json.loads(out.stdout.strip().splitlines()[-1])
        g, d = row["adapter"], row["deformable_adapter"]
        print(
            f"{size:>5} px  global {g['seconds']:.3f} s {g['memory_mb']:.0f} MB   deformable {d['seconds']:.3f} s "
            f"{d['memory_mb']:.0f} MB   ratio time {d['seconds'] / g['seconds']:.2f}x  memory "
            f"{d['memory_mb'] / g['memory_mb']:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
