"""A base ViT for the tiny default: trained on a general synthetic world, never on a corpus's labels.

ViTP reads the image only once the ViT's features are worth reading (docs/pretraining-evidence.md
§2): from random init the tiny default's VLM reads presence in one seed of three. The paper starts
from a pretrained ViT (InternViT-300M); the tiny default starts from this one instead. It is made
by code, on its own world:

- scenes of :func:`vitp_geo.synthetic.generate_scene` with seeds from :data:`BASE_SEED_OFFSET` on,
  a range no corpus, unseen world or evaluation uses (corpora use ``seed * 1000 + i``);
- each 224 px scene tiled as InternVL tiles it (2 x 2 tiles of 112 px and the whole scene resized
  as a thumbnail);
- dense targets per 14 px patch: its class fractions (soft cross-entropy) and the number of
  building centres in it (squared error), the two things an aerial ViT should see; random quarter
  turns of the tiles.

It is trained once per machine and settings and cached (:func:`base_cache_dir`): the run's summary
and ``backbone.json`` name the file and its settings. ``vitp-geo pretrain --vision-init random``
starts from random init instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitp_geo.io.atomic import atomic_output

# Scene seeds of the base world start here (corpora use seed * 1000 + i, their unseen worlds
# seed + 1,000,003 of that, benchmarks/pretrain_gain.py's evaluation scenes 7,000,000 + k).
BASE_SEED_OFFSET = 7_000_000_000
BASE_VERSION = 2  # bump when the recipe changes, so that cached bases are rebuilt (2: math attention kernel)
CACHE_ENV = "VITP_GEO_CACHE"
BASE_FILE = "backbone.safetensors"
BASE_META = "base.json"
COUNT_WEIGHT = 2.0  # squared error of the building-centre counts against the class cross-entropy


@dataclass(frozen=True)
class BaseSpec:
    """What makes a base: its world, its training. The cache key is a hash of these fields."""

    arch: str = "vitp_tiny_patch14_112"
    scenes: int = 480  # 2,400 tiles; 240 scenes read no better than random init in the default
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    drop_path: float = 0.1
    scene_size: int = 224
    seed: int = 0  # the world's seeds are BASE_SEED_OFFSET + seed * scenes + i
    bf16: bool = True  # autocast on a CPU or GPU that multiplies bf16 in hardware

    def validate(self) -> BaseSpec:
        for name in ("scenes", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"base {name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"base seed must be >= 0, got {self.seed}")
        return self

    def schedule(self) -> dict[str, Any]:
        """The keyword arguments of :func:`vitp_geo.tasks.patch_head.train_vit_head` this spec sets."""
        return {
            "steps": self.steps,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_ratio": self.warmup_ratio,
            "grad_clip": self.grad_clip,
        }

    def key(self) -> str:
        data = json.dumps({"version": BASE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


def base_cache_dir() -> Path:
    """``$VITP_GEO_CACHE/bases``, else ``$XDG_CACHE_HOME/vitp-geo/bases``, else ``~/.cache/vitp-geo/bases``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root) / "bases"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vitp-geo" / "bases"


def dense_targets(mask: np.ndarray, centres: np.ndarray, patch: int, scale: int = 1) -> tuple[Tensor, Tensor]:
    """Per-patch targets of one tile.

    Args:
        mask: (H, W) class ids of the tile's source pixels (``scale`` source pixels per tile pixel).
        centres: (K, 2) building centres (x, y) in the same source pixels.
        patch: the ViT's patch side in tile pixels.
        scale: source pixels per tile pixel (2 for the thumbnail of a 224 px scene).

    Returns:
        (g, g, C) class fractions per patch (each sums to 1) and (g, g) building-centre counts.
    """
    from vitp_geo.synthetic.scene import CLASS_NAMES

    side = patch * scale
    g = mask.shape[0] // side
    if mask.shape != (g * side, g * side):
        raise ValueError(f"mask {mask.shape} is not a square of whole {side} px patches")
    onehot = np.eye(len(CLASS_NAMES), dtype=np.float32)[mask]
    fractions = onehot.reshape(g, side, g, side, -1).mean(axis=(1, 3))
    counts = np.zeros((g, g), np.float32)
    for x, y in centres:
        if 0 <= x < g * side and 0 <= y < g * side:
            counts[int(y // side), int(x // side)] += 1
    return torch.from_numpy(fractions), torch.from_numpy(counts)


def building_centres(scene: Any) -> np.ndarray:
    """(K, 2) pixel (x, y) of the centroids of a :class:`SyntheticScene`'s buildings."""
    from shapely.geometry.base import BaseGeometry

    inverse = ~scene.transform
    points = []
    for o in scene.objects:
        geometry = o["geometry"]
        if o["class_id"] == 1 and isinstance(geometry, BaseGeometry):
            c = geometry.centroid
            points.append(inverse @ (c.x, c.y))
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def base_world(
    spec: BaseSpec, tile: int, patch: int, progress: Callable[[Any], Any] | None = None
) -> tuple[np.ndarray, Tensor, Tensor]:
    """The base world's tiles (N, 3, tile, tile) uint8 and their per-patch targets."""
    from PIL import Image

    from vitp_geo.synthetic.scene import SCENE_CLASSES, generate_scene

    if spec.scene_size % tile:
        raise ValueError(f"base scene_size {spec.scene_size} is not a multiple of the tile {tile}")
    n = spec.scene_size // tile
    images: list[np.ndarray] = []
    fractions: list[Tensor] = []
    counts: list[Tensor] = []
    for i in (progress or iter)(range(spec.scenes)):
        scene = generate_scene(
            BASE_SEED_OFFSET + spec.seed * spec.scenes + i,
            spec.scene_size,
            scene_class=i % len(SCENE_CLASSES),
        )
        centres = building_centres(scene)
        for r in range(n):
            for c in range(n):
                images.append(scene.image[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile])
                f, k = dense_targets(
                    scene.mask[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile],
                    centres - [c * tile, r * tile],
                    patch,
                )
                fractions.append(f)
                counts.append(k)
        if n > 1:  # the thumbnail InternVL appends: the whole scene at one tile's size
            thumb = Image.fromarray(scene.image.transpose(1, 2, 0)).resize(
                (tile, tile), Image.Resampling.BICUBIC
            )
            images.append(np.asarray(thumb).transpose(2, 0, 1))
            f, k = dense_targets(scene.mask, centres, patch, scale=n)
            fractions.append(f)
            counts.append(k)
    return np.stack(images), torch.stack(fractions), torch.stack(counts)


class DenseHead(nn.Module):
    """A linear map of each patch token to class logits and a building-centre count."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, n_classes + 1)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.proj(tokens)


def dense_loss(out: Tensor, fractions: Tensor, counts: Tensor) -> Tensor:
    """Soft cross-entropy of the class fractions plus ``COUNT_WEIGHT`` x squared count error, per patch."""
    out = out.float()
    ce = -(fractions * out[..., :-1].log_softmax(-1)).sum(-1).mean()
    return ce + COUNT_WEIGHT * ((out[..., -1] - counts) ** 2).mean()


def train_base(spec: BaseSpec) -> tuple[nn.Module, dict[str, Any]]:
    """Build the base world and train the ViT on it; returns the ViT (eval mode) and what it took."""
    from tqdm.auto import tqdm

    from vitp_geo.models.attention import training_attention, vit_tokens
    from vitp_geo.models.vit import build_vision_tower
    from vitp_geo.pretrain.run import cpu_has_native_bf16
    from vitp_geo.synthetic.scene import CLASS_NAMES
    from vitp_geo.tasks.patch_head import normalise, patch_tokens, train_vit_head

    spec.validate()
    torch.manual_seed(spec.seed)
    vit = build_vision_tower(spec.arch, drop_path_rate=spec.drop_path)
    patch = int(vit.patch_embed.patch_size[0])
    tile = int(vit.patch_embed.grid_size[0]) * patch
    t0 = time.perf_counter()
    bar = lambda it, desc, total: tqdm(it, desc=desc, total=total, leave=False, file=sys.stderr)  # noqa: E731
    images, fractions, counts = base_world(spec, tile, patch, lambda it: bar(it, "base world", spec.scenes))
    built = time.perf_counter() - t0
    head = DenseHead(int(vit.embed_dim), len(CLASS_NAMES))
    g = int(vit.patch_embed.grid_size[0])
    bf16 = spec.bf16 and (torch.cuda.is_available() or cpu_has_native_bf16())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vit.to(device)
    head.to(device)
    gen = torch.Generator().manual_seed(spec.seed)
    tokens = vit_tokens(vit)  # 65: the math attention kernel under CPU bf16 (models.attention)

    def loss() -> Tensor:
        idx = torch.randint(len(images), (spec.batch_size,), generator=gen)
        k = int(torch.randint(4, (1,), generator=gen))  # a quarter turn of tiles and targets alike
        x = torch.rot90(normalise(images[idx.numpy()]), k, (2, 3)).to(device)
        f = torch.rot90(fractions[idx], k, (1, 2)).to(device)
        c = torch.rot90(counts[idx], k, (1, 2)).to(device)
        with (
            torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16),
            training_attention(tokens),
        ):
            out = head(patch_tokens(vit, x)).reshape(len(idx), g, g, -1)
        return dense_loss(out, f, c)

    train_vit_head(vit, head, loss, **spec.schedule(), progress=lambda it: bar(it, "base ViT", spec.steps))
    vit.to("cpu")
    took = {
        "tiles": len(images),
        "world_s": round(built, 1),
        "train_s": round(time.perf_counter() - t0 - built, 1),
        "precision": "bf16-mixed" if bf16 else "32-true",
    }
    return vit, took


def synthetic_base(
    spec: BaseSpec, cache: Path | None = None, log: Callable[[str], None] = print
) -> tuple[Path, dict[str, Any], bool]:
    """The cached base of ``spec``, trained first when absent; returns (weights, meta, reused?).

    The folder ``<cache>/synthetic-<key>`` holds ``backbone.safetensors`` + ``backbone.json``
    (:func:`vitp_geo.models.vit.export_backbone`) and ``base.json`` (the spec, what it took). It is
    written beside and renamed in when complete, so an interrupted build leaves nothing half-made.
    """
    from vitp_geo.models.vit import export_backbone

    spec.validate()
    folder = (cache or base_cache_dir()) / f"synthetic-{spec.key()}"
    weights, meta_path = folder / BASE_FILE, folder / BASE_META
    if weights.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e}); delete {folder} to rebuild the base") from e
        return weights, meta, True
    log(
        f"building the synthetic base ViT once for this machine ({spec.scenes} scenes, {spec.steps} steps; "
        f"cached in {folder})"
    )
    vit, took = train_base(spec)
    meta = {"kind": "synthetic", "version": BASE_VERSION, "key": spec.key(), "spec": asdict(spec), **took}
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder) as tmp:
        export_backbone(vit, tmp)  # type: ignore[arg-type]
        (tmp / BASE_META).write_text(json.dumps(meta, indent=2) + "\n")
    return weights, meta, False
