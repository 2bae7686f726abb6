"""Training augmentations of the reference's detection pipelines, on images, box corners and masks.

The reference (mmdet / mmrotate configs of zcablii/ViTP) uses, in this order:

* **flips** — mmdet ``RandomFlip`` (horizontal, probability 0.5) for DIOR, SARDet-100K and SSDD;
  mmrotate ``RRandomFlip`` for DIOR-R, DOTA-v2.0 and RSAR: one of horizontal, vertical or
  diagonal (both axes) with probability 0.25 each, none with 0.25. Boxes are kept as their four
  corners here, so a flip mirrors the corners (an oriented box ``cx, cy, w, h, θ`` in le90 becomes
  ``W − cx, cy, w, h, −θ`` horizontally, ``cx, H − cy, w, h, −θ`` vertically and
  ``W − cx, H − cy, w, h, θ`` diagonally, up to le90's normalisation);
* **random rotation** — mmrotate ``PolyRandomRotate`` (DIOR-R, DOTA-v2.0, RSAR: probability 0.5,
  ``angles_range=180``, ``auto_bound=False``): the image turns about its centre by an angle drawn
  uniformly from (−180°, 180°) — or, when any object is of a "rect" class (round or square
  objects whose box angle is ill-defined: storage tanks, roundabouts, ...), by one of ±90°, 180°
  — on the same canvas (corners that leave it are lost, uncovered pixels become 0 before
  normalisation, bilinear); each box's corners turn with it, and a box is dropped when its
  centre leaves the image or a side is 5 px or shorter. mmrotate then throws away a sample left
  without boxes and draws another image; here that sample is kept unrotated instead (same
  image count per epoch, no re-draw inside a worker).

Positive angles turn counter-clockwise as seen on screen (OpenCV's convention, as the
reference). Masks (N, H, W) follow the image (flipped, or rotated with nearest-neighbour
sampling). Every random draw comes from the ``numpy.random.Generator`` passed in, which the
datasets seed per worker and epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitp_geo.geometry.obb import poly_to_obb

FLIP_DIRECTIONS = ("horizontal", "vertical", "diagonal")
RECT_ANGLES = (90.0, 180.0, -90.0, -180.0)  # what a "rect" class is turned by
MIN_SIDE = 5.0  # mmrotate's filter_border: sides must be longer than this (pixels)


@dataclass(frozen=True)
class Augment:
    """What to apply to a training sample (module doc).

    Args:
        flip_directions: the flips drawn from (``horizontal``, ``vertical``, ``diagonal``).
        flip_ratio: probability of each direction (one flip at most; their sum is at most 1).
        rotate_ratio: probability of a random rotation (0: none).
        rotate_range: rotation angles are drawn from (−range, range) degrees.
        rect_labels: labels whose presence restricts the angle to ±90° / 180°.
    """

    flip_directions: tuple[str, ...] = ("horizontal",)
    flip_ratio: float = 0.5
    rotate_ratio: float = 0.0
    rotate_range: float = 180.0
    rect_labels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        bad = [d for d in self.flip_directions if d not in FLIP_DIRECTIONS]
        if bad:
            raise ValueError(f"flip directions must be among {', '.join(FLIP_DIRECTIONS)}, got {bad}")
        if not 0 <= self.flip_ratio * len(self.flip_directions) <= 1 + 1e-9:
            raise ValueError(
                f"flip_ratio {self.flip_ratio} x {len(self.flip_directions)} direction(s) must lie in [0, 1]"
            )
        if not 0 <= self.rotate_ratio <= 1:
            raise ValueError(f"rotate_ratio must be in [0, 1], got {self.rotate_ratio}")
        if not 0 <= self.rotate_range <= 180:
            raise ValueError(f"rotate_range must be in [0, 180] degrees, got {self.rotate_range}")

    def __call__(
        self,
        rng: np.random.Generator,
        image: Tensor,
        quads: Tensor,
        labels: Tensor,
        masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(image, quads, keep, masks)`` after a random flip and rotation: ``keep`` (N,) bool
        says which input boxes remain (in order; a rotation drops some), ``quads`` and ``masks``
        hold those.

        Args:
            rng: the random stream.
            image: (C, H, W) raw (un-normalised) pixels.
            quads: (N, 4, 2) box corners in pixels.
            labels: (N,) labels.
            masks: (N, H, W) instance masks, or None.
        """
        keep = torch.ones(len(quads), dtype=torch.bool)
        u = rng.random()
        k = int(u // self.flip_ratio) if self.flip_ratio > 0 else len(self.flip_directions)
        if k < len(self.flip_directions):
            image, quads, masks = flip(self.flip_directions[k], image, quads, masks)
        if self.rotate_ratio > 0 and rng.random() < self.rotate_ratio:
            if any(int(v) in self.rect_labels for v in labels.tolist()):
                angle = float(RECT_ANGLES[int(rng.integers(len(RECT_ANGLES)))])
            else:
                angle = float(self.rotate_range * (2 * rng.random() - 1))
            turned = rotate(angle, image, quads, masks)
            if bool(turned[2].any()) or not len(quads):
                image, quads, keep, masks = turned
        return image, quads, keep, masks


def flip(
    direction: str, image: Tensor, quads: Tensor, masks: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Mirror ``image`` (…, H, W), box corners (N, 4, 2) and masks (N, H, W) in ``direction``.

    Corners stay clockwise on screen: a single mirror reverses their order, so it is reversed
    back; a diagonal flip (both axes, a half turn) keeps it.
    """
    h, w = image.shape[-2], image.shape[-1]
    dims = {"horizontal": (-1,), "vertical": (-2,), "diagonal": (-2, -1)}[direction]
    image = image.flip(dims)
    masks = masks.flip(dims) if masks is not None else None
    quads = quads.clone()
    if -1 in dims:
        quads[..., 0] = w - quads[..., 0]
    if -2 in dims:
        quads[..., 1] = h - quads[..., 1]
    if len(dims) == 1:
        quads = quads.flip(1)
    return image, quads, masks


def rotation_matrix(angle: float, center: tuple[float, float]) -> Tensor:
    """(2, 3) affine map of pixel coordinates turning ``angle`` degrees counter-clockwise on
    screen (y down) about ``center``: ``x' = c·(x − cx) + s·(y − cy) + cx``,
    ``y' = −s·(x − cx) + c·(y − cy) + cy``."""
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    cx, cy = center
    return torch.tensor([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy]], dtype=torch.float64)


def _warp(x: Tensor, angle: float, mode: str) -> Tensor:
    """Turn (B, C, H, W) about the image centre on the same canvas; outside pixels are 0.

    Pixel (i, j) has its centre at (j + 0.5, i + 0.5), as ``grid_sample``'s ``align_corners=False``;
    each output centre samples the input at the inverse rotation of itself.
    """
    h, w = x.shape[-2], x.shape[-1]
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    # inverse rotation in centred pixel units, expressed on grid_sample's [-1, 1] axes
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="zeros", align_corners=False)


def rotate(
    angle: float, image: Tensor, quads: Tensor, masks: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Turn ``image`` (C, H, W), corners (N, 4, 2), masks by ``angle`` degrees about the image
    centre and drop the boxes mmrotate drops (centre outside the image, a side ≤ 5 px; module
    doc). Returns ``(image, kept corners, keep (N,) bool, kept masks)``."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    image = _warp(image[None].float(), angle, "bilinear")[0]
    m = rotation_matrix(angle, (w / 2, h / 2))
    pts = quads.double().reshape(-1, 2)
    turned = (pts @ m[:, :2].T + m[:, 2]).reshape(-1, 4, 2).float()
    keep = _inside(turned, h, w)
    if masks is not None:
        masks = _warp(masks[None].float(), angle, "nearest")[0].to(masks.dtype)[keep]
    return image, turned[keep], keep, masks


def _inside(quads: Tensor, h: int, w: int) -> Tensor:
    """Boxes (N, 4, 2) whose centre lies strictly inside the image and whose sides exceed 5 px."""
    if not len(quads):
        return torch.zeros(0, dtype=torch.bool)
    obb = poly_to_obb(quads.reshape(-1, 8))
    cx, cy, bw, bh = obb[:, 0], obb[:, 1], obb[:, 2], obb[:, 3]
    return (cx > 0) & (cx < w) & (cy > 0) & (cy < h) & (bw > MIN_SIDE) & (bh > MIN_SIDE)


def rect_label_ids(rect_classes: Sequence[str] | None, classes: Sequence[str]) -> tuple[int, ...]:
    """Label ids of ``rect_classes`` (matched by name, ignoring case) in ``classes``.

    Raises:
        ValueError: a name that is not a class, naming it.
    """
    lower = [c.lower() for c in classes]
    out = []
    for name in rect_classes or ():
        if name.lower() not in lower:
            raise ValueError(f"rect_classes: {name!r} is not one of the classes {list(classes)}")
        out.append(lower.index(name.lower()))
    return tuple(out)
