"""What a frozen ViT's patch tokens carry: a tile's object counts, and per-patch classes.

The embedded default's VLM does not learn to count (docs/pretraining-evidence.md §2), and its
pretraining does not move the ViT past its base on the protocol's probe. This script asks the
ViT directly, with two linear read-outs of frozen patch tokens:

1. **counts**: a ridge map from each patch token to the number of objects of each class
   (buildings, water bodies, fields) whose point lies in the patch, fitted on the 2 x 2 tiles of
   ``--fit-scenes`` scenes and scored on those of ``--test-scenes`` others (seeds of their own,
   :data:`PROBE_SEED`). A tile's count is the sum of its patch predictions, rounded; it counts the
   objects a counting question about the tile counts (the vector builder's own edge rule,
   :func:`~vitp_geo.instruct.builders.vector.tile_objects`). Printed per class: accuracy over the
   tiles that hold at least one, the prior (the most common count among them: what an answer that
   ignores the image scores) and the mean absolute error.
2. **classes**: ``benchmarks/pretrain_gain.py``'s frozen probe (its evaluation tiles, ridge probe
   and ``--draws`` label draws of seed 0): mIoU at 1, 4 and 16 labelled tiles, and each
   backbone's difference to the first one, paired over the draws (mean ± std).

Backbones are ``backbone.safetensors`` files (a pretraining run's output) or one of:

- ``random``: the tiny ViT at random init (seed 0);
- ``base``: the default's synthetic base (``vitp_geo.pretrain.base``: per-patch classes and
  building centres of a general synthetic world; read from the cache, built when absent);
- ``mim``: a base made without labels, by masked image modelling on the same world's tiles
  (SimMIM-style, :func:`train_mim`), built once into ``--work``. Pretrain from it with
  ``vitp-geo pretrain --vision-init <work>/mim/backbone.safetensors`` and pass the run's
  ``backbone.safetensors`` here to see what ViTP did to it.

    python benchmarks/base_probe.py                  # random, base, mim: 4:39 alone on 2 CPU cores, 22 s once built
    python benchmarks/base_probe.py base runs/pretrain-rs-x/backbone.safetensors

Time things alone: another torch job on a 2-core machine slows both by 10-20x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vitp_geo.instruct.builders.labels import PixelLabels  # noqa: E402
from vitp_geo.instruct.builders.tile_places import Tile  # noqa: E402
from vitp_geo.pretrain.base import BASE_SEED_OFFSET, BaseSpec, base_world, synthetic_base  # noqa: E402

COUNTED: tuple[str, ...] = ("building", "water", "field")  # the classes a scene lists as objects
# Scenes of the count probe: past any base world's (BASE_SEED_OFFSET + seed * scenes + i).
PROBE_SEED = BASE_SEED_OFFSET + 1_000_000_000
SCENE, TILE, PATCH = 224, 112, 14
RIDGE = 0.1


# --------------------------------------------------------------------------------------------------
# Counts


def scene_labels(scene: Any) -> PixelLabels:
    """The objects of a :class:`~vitp_geo.synthetic.scene.SyntheticScene` in its pixels, as the vector builder reads them."""
    from shapely.affinity import affine_transform

    inv = ~scene.transform
    matrix = [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]
    objects = [o for o in scene.objects if o["class_name"] in COUNTED]
    return PixelLabels(
        geometries=[affine_transform(o["geometry"], matrix) for o in objects],
        map_geometries=[o["geometry"] for o in objects],
        classes=[o["class_name"] for o in objects],
        vocabulary=sorted({o["class_name"] for o in objects}),
    )


def patch_counts(labels: PixelLabels, tile: Tile, patch: int = PATCH) -> np.ndarray:
    """(g, g, len(COUNTED)) objects per patch of ``tile``: those a counting question about it counts.

    The vector builder's edge rule decides (``tile_objects`` with its default ``min_visible``); an
    object sits in the patch that holds a point of its visible part (``representative_point``).
    """
    import shapely

    from vitp_geo.instruct.builders.vector import VectorSource, tile_objects

    min_visible = VectorSource.__dataclass_fields__["min_visible"].default
    g = tile.height // patch
    out = np.zeros((g, g, len(COUNTED)), np.float32)
    for o in tile_objects(labels, shapely.STRtree(labels.geometries), tile, min_visible):
        if o.kept:
            p = o.visible.representative_point()
            out[min(g - 1, int(p.y // patch)), min(g - 1, int(p.x // patch)), COUNTED.index(o.cls)] += 1
    return out


def count_world(scenes: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2 x 2 tiles (N, 3, 112, 112) uint8 of ``scenes`` scenes seeded ``first + i``, and their patch counts."""
    from vitp_geo.synthetic.scene import SCENE_CLASSES, generate_scene

    images, counts = [], []
    for i in range(scenes):
        scene = generate_scene(first + i, SCENE, scene_class=i % len(SCENE_CLASSES))
        labels = scene_labels(scene)
        for r in range(SCENE // TILE):
            for c in range(SCENE // TILE):
                images.append(scene.image[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE])
                counts.append(patch_counts(labels, Tile(r * TILE, c * TILE, TILE, TILE)))
    return np.stack(images), np.stack(counts)


@dataclass
class CountScore:
    accuracy: float  # rounded tile sums equal to the true count, over tiles with at least one
    prior: float  # the most common true count's share among those tiles
    mae: float
    tiles: int


def _with_bias(f: Tensor) -> Tensor:
    """(N, P, C) patch features as (N * P, C + 1) float64 rows with a constant column."""
    rows = f.reshape(-1, f.shape[-1]).double()
    return torch.cat([rows, torch.ones(len(rows), 1, dtype=torch.float64)], 1)


def count_probe(
    fit_f: Tensor, fit_counts: np.ndarray, test_f: Tensor, test_counts: np.ndarray
) -> dict[str, CountScore]:
    """Ridge map patch features (N, P, C) -> patch counts (N, g, g, K); scored on tile sums."""
    x, xt = _with_bias(fit_f), _with_bias(test_f)
    y = torch.from_numpy(fit_counts.reshape(-1, len(COUNTED))).double()
    w = torch.linalg.solve(x.T @ x + RIDGE * torch.eye(x.shape[1], dtype=torch.float64), x.T @ y)
    pred = (xt @ w).reshape(test_f.shape[0], -1, len(COUNTED)).sum(1).numpy()
    true = test_counts.reshape(len(test_counts), -1, len(COUNTED)).sum(1)
    out = {}
    for k, name in enumerate(COUNTED):
        has = true[:, k] > 0
        t, p = true[has, k], pred[has, k]
        prior = float(np.bincount(t.astype(int)).max() / len(t)) if len(t) else float("nan")
        out[name] = CountScore(
            float((np.round(p) == t).mean()) if len(t) else float("nan"),
            prior,
            float(np.abs(p - t).mean()) if len(t) else float("nan"),
            int(has.sum()),
        )
    return out


# --------------------------------------------------------------------------------------------------
# A base without labels


class MaskedPatches(nn.Module):
    """SimMIM's parts around a ViT: a learnt mask token, and a linear map to a patch's pixels."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.pixels = nn.Linear(dim, patch * patch * 3)


def mim_loss(vit: VisionTransformer, head: MaskedPatches, x: Tensor, mask: Tensor) -> Tensor:
    """L1 between predicted and true per-patch-normalised pixels of the masked patches.

    ``x`` is (B, 3, H, W) normalised; ``mask`` (B, g*g) is True where a patch embedding is
    replaced by the mask token before the position embedding and the blocks.
    """
    n = x.shape[0]
    p = int(vit.patch_embed.patch_size[0])
    g = x.shape[-1] // p
    t = vit.patch_embed(x)
    m = mask.reshape(n, g, g, 1) if t.dim() == 4 else mask[..., None]  # NHWC with dynamic sizes
    t = torch.where(m, head.mask_token.to(t.dtype), t)
    t = vit.norm(vit.blocks(vit.norm_pre(vit._pos_embed(t))))
    pred = head.pixels(t[:, vit.num_prefix_tokens :]).float()
    target = x.reshape(n, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(n, g * g, -1)
    target = (target - target.mean(-1, keepdim=True)) / (target.std(-1, keepdim=True) + 1e-4)
    return (pred - target).abs().mean(-1)[mask].mean()


def train_mim(spec: BaseSpec, mask_ratio: float = 0.6) -> tuple[VisionTransformer, list[float]]:
    """A base by masked image modelling on the tiles of ``spec``'s world (its targets unused).

    The ViT, world, steps, batch, lr schedule, clipping, quarter turns and bf16 are the synthetic
    base's (``vitp_geo.pretrain.base.train_base``); only the loss differs. Returns the ViT (eval
    mode) and the loss of every step.
    """
    from vitp_geo.models.attention import training_attention, vit_tokens
    from vitp_geo.models.vit import build_vision_tower
    from vitp_geo.pretrain.run import cpu_has_native_bf16
    from vitp_geo.tasks.patch_head import normalise, train_vit_head

    torch.manual_seed(spec.seed)
    vit = build_vision_tower(spec.arch, drop_path_rate=spec.drop_path)
    p = int(vit.patch_embed.patch_size[0])
    g = int(vit.patch_embed.grid_size[0])
    images, _, _ = base_world(spec, g * p, p)
    head = MaskedPatches(int(vit.embed_dim), p)
    bf16 = spec.bf16 and cpu_has_native_bf16()
    gen = torch.Generator().manual_seed(spec.seed)
    losses: list[float] = []

    def loss() -> Tensor:
        idx = torch.randint(len(images), (spec.batch_size,), generator=gen)
        k = int(torch.randint(4, (1,), generator=gen))
        x = torch.rot90(normalise(images[idx.numpy()]), k, (2, 3))
        mask = torch.rand(len(idx), g * g, generator=gen) < mask_ratio
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), training_attention(vit_tokens(vit)):
            out = mim_loss(vit, head, x, mask)
        losses.append(float(out.detach()))
        return out

    train_vit_head(vit, head, loss, **spec.schedule())
    return vit, losses


def mim_base(work: Path, spec: BaseSpec) -> Path:
    """``<work>/mim/backbone.safetensors``, trained when absent or made with other settings."""
    from vitp_geo.io.atomic import atomic_output
    from vitp_geo.models.vit import export_backbone

    folder = work / "mim"
    stamp = folder / "mim.json"
    want = {"spec": asdict(spec), "mask_ratio": 0.6}
    if stamp.is_file() and json.loads(stamp.read_text()).get("settings") == want:
        return folder / "backbone.safetensors"
    t0 = time.perf_counter()
    vit, losses = train_mim(spec)
    work.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder) as tmp:
        export_backbone(vit, tmp)
        meta = {
            "settings": want,
            "seconds": round(time.perf_counter() - t0, 1),
            "first_loss": losses[0],
            "last_loss": losses[-1],
        }
        (tmp / "mim.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder / "backbone.safetensors"


# --------------------------------------------------------------------------------------------------
# Run


def backbone(name: str, work: Path, spec: BaseSpec) -> VisionTransformer:
    from vitp_geo.models.vit import build_vision_tower, load_backbone

    if name == "random":
        torch.manual_seed(0)
        return build_vision_tower(spec.arch)
    if name == "base":
        return load_backbone(synthetic_base(spec)[0])
    if name == "mim":
        return load_backbone(mim_base(work, spec))
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: not a backbone file, nor one of random, base, mim")
    return load_backbone(path)


def main(argv: Sequence[str] | None = None) -> int:
    import pretrain_gain as pg

    from vitp_geo.evaluation.probe import patch_labels
    from vitp_geo.synthetic.scene import CLASS_NAMES
    from vitp_geo.tasks.patch_head import patch_features

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "backbones", nargs="*", default=["random", "base", "mim"], help="files or random | base | mim"
    )
    ap.add_argument("--work", type=Path, default=Path("runs/base_probe"), help="where the mim base is kept")
    ap.add_argument("--fit-scenes", type=int, default=150)
    ap.add_argument("--test-scenes", type=int, default=90)
    ap.add_argument("--draws", type=int, default=30, help="label draws of the class probe")
    args = ap.parse_args(argv)
    spec = BaseSpec()
    fit_x, fit_c = count_world(args.fit_scenes, PROBE_SEED)
    test_x, test_c = count_world(args.test_scenes, PROBE_SEED + args.fit_scenes)
    ev = pg.eval_data(pg.Settings())
    n_classes = len(CLASS_NAMES)
    pool_y, test_y = (patch_labels(y, PATCH, n_classes) for y in (ev.pool_y, ev.test_y))
    orders = pg.draw_orders(0, args.draws, len(ev.pool_x))
    print(f"counts: {len(fit_x)} fit tiles, {len(test_x)} test tiles; classes: {args.draws} label draws")
    print(
        f"{'backbone':<40} "
        + " ".join(f"{c + ' acc/prior/mae':>24}" for c in COUNTED)
        + "  probe@1 probe@4 probe@16"
    )
    scores: dict[str, dict[int, list[float]]] = {}
    for name in args.backbones:
        vit = backbone(name, args.work, spec)
        with torch.no_grad():
            counts = count_probe(patch_features(vit, fit_x), fit_c, patch_features(vit, test_x), test_c)
            pool_f, test_f = patch_features(vit, ev.pool_x), patch_features(vit, ev.test_x)
        scores[name] = pg.probe_scores(pool_f, pool_y, {"t": (test_f, test_y)}, orders, pg.SHOTS, n_classes)[
            "t"
        ]
        cells = " ".join(f"{s.accuracy:>10.2f}/{s.prior:.2f}/{s.mae:.2f}" for s in counts.values())
        probe = " ".join(f"{np.mean(scores[name][k]):7.3f}" for k in pg.SHOTS)
        print(f"{name[-40:]:<40} {cells}  {probe}", flush=True)
    first = args.backbones[0]
    for name in args.backbones[1:]:
        diffs = " ".join(
            f"@{k} {np.mean(d):+.3f} ± {np.std(d, ddof=1) if len(d) > 1 else 0.0:.3f}"
            for k in pg.SHOTS
            for d in [np.subtract(scores[name][k], scores[first][k])]
        )
        print(f"{name[-40:]} - {first}: {diffs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
