"""Oriented box coder: regression targets ``(dx, dy, dw, dh, dangle)`` of a box relative to a RoI.

Boxes are ``(cx, cy, w, h, angle)`` in pixels, angle in radians (the convention of
``vitp_geo.geometry.obb``). For a RoI ``p`` and a target ``g``:

* the centre offset is measured in the RoI's own frame (rotated by ``p.angle``) and divided by
  the RoI's size: ``dx = ((gx - px) cos pa + (gy - py) sin pa) / pw``,
  ``dy = (-(gx - px) sin pa + (gy - py) cos pa) / ph``;
* ``dw = log(gw / pw)``, ``dh = log(gh / ph)``;
* ``dangle = wrap(ga - pa) / pi`` where the difference is first wrapped into ``[-pi/2, pi/2)``
  (a rectangle is unchanged by a half turn) and, when it lies beyond ``±pi/4``, the target is
  re-expressed with its width and height swapped and its angle moved by a quarter turn, so
  ``|dangle| <= 1/4`` — the same rectangle, the parameterisation nearest the RoI.

Decoding inverts this exactly; the decoded box describes the same rectangle (same corners) as
the encoded one. Deltas are divided by ``weights`` (Faster R-CNN's ``1/std``; mmrotate uses
stds ``(0.1, 0.1, 0.2, 0.2, 0.1)`` → weights ``(10, 10, 5, 5, 10)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp(dw) above this would overflow / create absurd boxes (torchvision's bound: log(1000 / 16)).
DEFAULT_CLAMP = math.log(1000.0 / 16)


def _wrap_half_turn(a: Tensor) -> Tensor:
    """Angles wrapped into [-pi/2, pi/2)."""
    return torch.remainder(a + math.pi / 2, math.pi) - math.pi / 2


class OrientedBoxCoder:
    """Encode / decode oriented boxes against RoIs (module doc).

    Args:
        weights: divisors of ``(dx, dy, dw, dh, dangle)`` (i.e. ``1 / std``).
        clamp: upper bound on decoded ``dw`` / ``dh`` before ``exp``.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float, float] = (10.0, 10.0, 5.0, 5.0, 10.0),
        clamp: float = DEFAULT_CLAMP,
    ) -> None:
        if any(w <= 0 for w in weights):
            raise ValueError(f"weights must be > 0, got {weights}")
        self.weights = weights
        self.clamp = clamp

    def encode(self, targets: Tensor, rois: Tensor) -> Tensor:
        """Regression targets of ``targets`` relative to ``rois``.

        Args:
            targets: (N, 5) boxes ``cx, cy, w, h, angle``.
            rois: (N, 5) reference boxes (w, h > 0).

        Returns:
            (N, 5) weighted deltas.
        """
        px, py, pw, ph, pa = rois.unbind(-1)
        gx, gy, gw, gh, ga = targets.unbind(-1)
        da = _wrap_half_turn(ga - pa)
        swap = da.abs() > math.pi / 4  # the same rectangle, described by its other side
        gw, gh = torch.where(swap, gh, gw), torch.where(swap, gw, gh)
        da = torch.where(swap, da - torch.sign(da) * (math.pi / 2), da)
        cos, sin = torch.cos(pa), torch.sin(pa)
        ox, oy = gx - px, gy - py
        wx, wy, ww, wh, wa = self.weights
        dx = (ox * cos + oy * sin) / pw
        dy = (-ox * sin + oy * cos) / ph
        dw = torch.log(gw / pw)
        dh = torch.log(gh / ph)
        return torch.stack([wx * dx, wy * dy, ww * dw, wh * dh, wa * da / math.pi], dim=-1)

    def decode(self, deltas: Tensor, rois: Tensor) -> Tensor:
        """Boxes from weighted deltas.

        Args:
            deltas: (N, 5) or (N, K, 5) (K class-specific predictions per RoI).
            rois: (N, 5) reference boxes.

        Returns:
            Boxes with the shape of ``deltas`` (angle not normalised: pass the result through
            ``obb.normalize_obb`` for the canonical form).
        """
        r = rois[:, None, :] if deltas.ndim == 3 else rois
        px, py, pw, ph, pa = r.unbind(-1)
        wx, wy, ww, wh, wa = self.weights
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.clamp)
        da = deltas[..., 4] / wa * math.pi
        cos, sin = torch.cos(pa), torch.sin(pa)
        ox, oy = dx * pw, dy * ph
        gx = px + ox * cos - oy * sin
        gy = py + ox * sin + oy * cos
        return torch.stack([gx, gy, pw * torch.exp(dw), ph * torch.exp(dh), pa + da], dim=-1)
