"""Building torchgeo-style detection samples from parsed annotations (validation, degenerate boxes)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ParseError", "empty_sample", "polygon_sample", "box_sample", "lookup_class"]

log = logging.getLogger(__name__)


class ParseError(ValueError):
    """A malformed annotation: names the file, the line (or element) and the offending value."""

    def __init__(self, path: str | Path, where: str | int | None, message: str) -> None:
        loc = (
            f"{path}"
            if where is None
            else (f"{path}:{where}" if isinstance(where, int) else f"{path} ({where})")
        )
        super().__init__(f"{loc}: {message}")


def lookup_class(
    name: str, index: dict[str, int], classes: Sequence[str], path: str | Path, where: str | int
) -> int:
    """The id of ``name`` in ``index`` (case-insensitive) or a ``ParseError`` listing the known names."""
    i = index.get(name.lower())
    if i is None:
        shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise ParseError(path, where, f"unknown class {name!r} (known: {shown})")
    return i


FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite32(value: float) -> bool:
    """Finite once stored as float32, as boxes are (``1e200`` is finite in float64, inf in float32)."""
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def polygon_sample(
    polys: Sequence[Sequence[float]],
    labels: Sequence[int],
    difficult: Sequence[bool] | None,
    source: str | Path,
    scores: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """A sample from quadrilaterals: ``bbox_xyxyxyxy`` (N, 8), ``bbox_xyxy`` (N, 4) bounds, ``label``, ``difficult``.

    Polygons with a non-finite coordinate or zero area are dropped and counted in a log message.
    With ``scores`` (predictions) the sample has ``score`` instead of ``difficult``.
    """
    p = np.asarray(polys, np.float64).reshape(-1, 8)
    lab = np.asarray(labels, np.int64).reshape(-1)
    dif = np.zeros(len(p), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    x, y = p[:, 0::2], p[:, 1::2]
    with np.errstate(invalid="ignore"):
        area = 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))
    ok = np.isfinite(p).all(1) & (area > 0)
    _report(int((~ok).sum()), len(p), source)
    p, lab, dif = p[ok], lab[ok], dif[ok]
    xy = p.reshape(-1, 4, 2)
    bounds = np.concatenate([xy.min(1), xy.max(1)], 1) if len(p) else np.zeros((0, 4))
    out = {
        "bbox_xyxyxyxy": torch.as_tensor(p, dtype=torch.float32),
        "bbox_xyxy": torch.as_tensor(bounds, dtype=torch.float32),
        "label": torch.as_tensor(lab, dtype=torch.int64),
    }
    return _finish(out, dif, scores, ok)


def box_sample(
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    difficult: Sequence[bool] | None,
    source: str | Path,
    scores: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """A sample from horizontal boxes ``x1, y1, x2, y2``: ``bbox_xyxy`` (N, 4), ``label``, ``difficult``.

    Boxes with a non-finite coordinate or no area (``x2 <= x1`` or ``y2 <= y1``) are dropped and
    counted in a log message. With ``scores`` (predictions) the sample has ``score`` instead of
    ``difficult``.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    lab = np.asarray(labels, np.int64).reshape(-1)
    dif = np.zeros(len(b), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(b).all(1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    _report(int((~ok).sum()), len(b), source)
    out = {
        "bbox_xyxy": torch.as_tensor(b[ok], dtype=torch.float32),
        "label": torch.as_tensor(lab[ok], dtype=torch.int64),
    }
    return _finish(out, dif[ok], scores, ok)


def _finish(
    out: dict[str, Tensor], difficult: np.ndarray, scores: Sequence[float] | None, ok: np.ndarray
) -> dict[str, Tensor]:
    if scores is None:
        out["difficult"] = torch.as_tensor(difficult, dtype=torch.bool)
    else:
        out["score"] = torch.as_tensor(np.asarray(scores, np.float64).reshape(-1)[ok], dtype=torch.float32)
    return out


def empty_sample(oriented: bool) -> dict[str, Tensor]:
    """A sample without objects."""
    out = {
        "bbox_xyxy": torch.zeros(0, 4),
        "label": torch.zeros(0, dtype=torch.int64),
        "difficult": torch.zeros(0, dtype=torch.bool),
    }
    if oriented:
        out["bbox_xyxyxyxy"] = torch.zeros(0, 8)
    return out


def _report(dropped: int, total: int, source: str | Path) -> None:
    if dropped:
        log.warning(
            "%s: dropped %d of %d degenerate boxes (zero area or non-finite coordinates)",
            source,
            dropped,
            total,
        )
