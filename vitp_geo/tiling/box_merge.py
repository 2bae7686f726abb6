"""The one rule that merges detections from overlapping windows (scene inference and DOTA patches).

A window detector sees only its window. An object larger than the overlap of two windows is cut
in both: each returns the part it sees, a box ending at the shared window edge. Dropping such
boxes (hoping a neighbour sees the object whole) loses every object wider than the overlap, and
plain NMS keeps one half. The rule, used by ``tiling.detection.DetectionMerger`` (scene windows)
and ``tiling.dota_split.merge_patch_detections`` (DOTA patches) alike:

1. **Cut boxes.** A box is *cut* when its bounds come within ``edge_margin`` pixels of an inner
   window edge (an edge that is not the scene's / image's own edge).
2. **Join across seams.** A cut box and a box of the same class from another window are parts of
   one object when their parts inside the two windows' shared area overlap: the IoU of
   ``box_i ∩ shared`` and ``box_j ∩ shared`` (polygons, so oriented boxes are compared as drawn)
   is above the NMS threshold — the same test NMS applies to whole boxes, restricted to the
   area both windows saw. Joined boxes form groups (an object may span several windows).
   In a group holding a box that is not cut (a window saw the object whole) the cut parts are
   dropped and the whole boxes go on to NMS (two objects that both touch one part both survive);
   otherwise the group becomes the box covering all its parts: for horizontal boxes their
   envelope, for oriented boxes the minimum-area rectangle around all parts' corners; its score
   is the best part's.
3. **Class-wise rotated NMS** (``geometry.obb.batched_rotated_nms``) at the same threshold over
   the remaining boxes.

The threshold is the checkpoint's final NMS IoU (``nms_threshold``): the model card's
``detector.nms_thresh``, or when it is None 0.5 for horizontal and 0.1 for oriented boxes, the
values ``models.detection.rcnn.DetectionModel`` applies inside each window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import torch

from vitp_geo.geometry.obb import batched_rotated_nms, hbb_to_obb, poly_to_obb

__all__ = ["JoinedBoxes", "card_nms_threshold", "join_cut_boxes", "merge_window_boxes", "nms_threshold"]

DEFAULT_NMS = {"hbb": 0.5, "obb": 0.1}  # the detectors' own final NMS IoU (models.detection.rcnn)


def nms_threshold(box_type: str, nms_thresh: float | None = None) -> float:
    """The cross-window merge threshold: ``nms_thresh``, or the detector default for ``box_type``.

    Raises:
        ValueError: an unknown box type or a threshold outside [0, 1].
    """
    if box_type not in DEFAULT_NMS:
        raise ValueError(f"box_type must be 'hbb' or 'obb', got {box_type!r}")
    if nms_thresh is None:
        return DEFAULT_NMS[box_type]
    value = float(nms_thresh)
    if not 0 <= value <= 1:  # NaN fails too
        raise ValueError(f"nms_thresh must be in [0, 1], got {nms_thresh}")
    return value


def card_nms_threshold(arch: Mapping[str, Any]) -> float:
    """The merge threshold of a detection checkpoint from its model card's ``arch``
    (``box_type`` and ``detector.nms_thresh``; ``ModelCard.arch``)."""
    detector = arch.get("detector") or {}
    return nms_threshold(str(arch.get("box_type", "hbb")), detector.get("nms_thresh"))


@dataclass
class JoinedBoxes:
    """Boxes after joining cut parts (all arrays have one row per box).

    Attributes:
        polys: (K, 4, 2) corners in the common pixel frame.
        obb: (K, 5) ``cx, cy, w, h, angle`` of each box (the input's own for boxes kept as given).
        scores, labels: (K,).
        horizontal: (K,) whether the box is a horizontal box.
        source: (K,) index of the input box kept as given, or -1 for a box covering joined parts.
        parts: (K,) object array: the input boxes each box stands for (a tuple of indices: the
            box itself, or the joined parts), so what travels with a box (a mask) can follow it.
    """

    polys: np.ndarray
    obb: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    horizontal: np.ndarray
    source: np.ndarray
    parts: np.ndarray

    def take(self, idx: np.ndarray) -> JoinedBoxes:
        return JoinedBoxes(*(a[idx] for a in self._arrays()))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.polys, self.obb, self.scores, self.labels, self.horizontal, self.source, self.parts)

    @staticmethod
    def concat(parts: list[JoinedBoxes]) -> JoinedBoxes:
        return JoinedBoxes(*(np.concatenate(a) for a in zip(*(p._arrays() for p in parts), strict=True)))


def _tuples(items: list[tuple[int, ...]]) -> np.ndarray:
    """A (K,) object array of index tuples (``JoinedBoxes.parts``)."""
    out = np.empty(len(items), object)
    for k, t in enumerate(items):
        out[k] = t
    return out


def _check_windows(windows: np.ndarray, n_boxes: int, window: np.ndarray) -> None:
    if windows.ndim != 2 or windows.shape[1] != 4:
        raise ValueError(f"windows must have shape (W, 4) (row0, col0, height, width), got {windows.shape}")
    if window.shape != (n_boxes,):
        raise ValueError(f"window must hold one window index per box ({n_boxes}), got shape {window.shape}")
    if n_boxes and (window.min() < 0 or window.max() >= len(windows)):
        raise ValueError(f"window indices must be in [0, {len(windows)}), got {window.min()}..{window.max()}")


def _cut(polys: np.ndarray, win: np.ndarray, height: int, width: int, margin: float) -> np.ndarray:
    """(N,) whether each box comes within ``margin`` of an inner edge of its window."""
    r0, c0, h, w = win.T
    lo, hi = polys.min(1), polys.max(1)  # (N, 2) x, y
    return (
        ((c0 > 0) & (lo[:, 0] <= c0 + margin))
        | ((r0 > 0) & (lo[:, 1] <= r0 + margin))
        | ((c0 + w < width) & (hi[:, 0] >= c0 + w - margin))
        | ((r0 + h < height) & (hi[:, 1] >= r0 + h - margin))
    )


def _groups(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Connected components (of size > 1) of the graph with edges ``i[k] - j[k]``."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for a in sorted(set(i.tolist()) | set(j.tolist())):
        comps.setdefault(find(a), []).append(a)
    return [c for c in comps.values() if len(c) > 1]


def _covering(polys: np.ndarray, horizontal: bool) -> np.ndarray:
    """(4, 2) corners of the box covering all of ``polys`` (M, 4, 2)."""
    pts = polys.reshape(-1, 2)
    if horizontal:
        (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    rect = shapely.minimum_rotated_rectangle(shapely.multipoints(pts))
    corners = np.asarray(shapely.get_coordinates(rect))[:4]
    if len(corners) < 4:  # all parts degenerate to a segment or a point
        (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    return corners


def join_cut_boxes(
    polys: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    window: np.ndarray,
    windows: np.ndarray,
    height: int,
    width: int,
    iou_threshold: float,
    *,
    horizontal: np.ndarray | None = None,
    obb: np.ndarray | None = None,
    edge_margin: float = 1.0,
) -> JoinedBoxes:
    """Steps 1–2 of the rule (module doc): boxes cut by inner window edges joined across seams.

    Args:
        polys: (N, 4, 2) box corners in the common pixel frame (scene or image pixels).
        scores, labels: (N,).
        window: (N,) index into ``windows`` of the window each box came from.
        windows: (W, 4) ``row0, col0, height, width`` of each window in the common frame.
        height, width: extent of the scene / image, to tell inner window edges from its edges.
        iou_threshold: the NMS threshold (``nms_threshold``).
        horizontal: (N,) whether each box is horizontal (default: none is).
        obb: (N, 5) oriented boxes of ``polys`` (default: ``poly_to_obb``).
        edge_margin: pixels from an inner edge within which a box counts as cut.
    """
    polys = np.asarray(polys, np.float64).reshape(-1, 4, 2)
    n = polys.shape[0]
    scores = np.asarray(scores, np.float64).reshape(n)
    labels = np.asarray(labels).astype(np.int64).reshape(n)
    window = np.asarray(window).astype(np.int64).reshape(-1)
    windows = np.asarray(windows, np.float64)
    _check_windows(windows, n, window)
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    hor = np.zeros(n, bool) if horizontal is None else np.asarray(horizontal, bool).reshape(n)
    if obb is None:
        obb = poly_to_obb(torch.from_numpy(polys.reshape(-1, 8))).numpy() if n else np.zeros((0, 5))
    boxes = JoinedBoxes(
        polys,
        np.asarray(obb, np.float64).reshape(n, 5),
        scores,
        labels,
        hor,
        np.arange(n),
        _tuples([(k,) for k in range(n)]),
    )
    if n == 0:
        return boxes
    win = windows[window]
    cut = _cut(polys, win, height, width, edge_margin)
    if not cut.any():
        return boxes
    geoms = shapely.convex_hull(shapely.polygons(polys))  # valid even for a quadrilateral drawn as a bow tie
    cut_idx = np.flatnonzero(cut)
    q, j = shapely.STRtree(geoms).query(geoms[cut_idx], predicate="intersects")
    i = cut_idx[q]
    ok = (i != j) & (labels[i] == labels[j]) & (window[i] != window[j])
    i, j = i[ok], j[ok]
    wi, wj = win[i], win[j]
    r0, c0 = np.maximum(wi[:, 0], wj[:, 0]), np.maximum(wi[:, 1], wj[:, 1])
    r1 = np.minimum(wi[:, 0] + wi[:, 2], wj[:, 0] + wj[:, 2])
    c1 = np.minimum(wi[:, 1] + wi[:, 3], wj[:, 1] + wj[:, 3])
    ok = (r1 > r0) & (c1 > c0)  # the two windows share an area
    i, j, shared = i[ok], j[ok], shapely.box(c0[ok], r0[ok], c1[ok], r1[ok])
    a, b = shapely.intersection(geoms[i], shared), shapely.intersection(geoms[j], shared)
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    same = (union > 0) & (inter > iou_threshold * np.where(union > 0, union, 1.0))
    groups = _groups(n, i[same], j[same])
    if not groups:
        return boxes
    dropped = np.zeros(n, bool)
    covers: list[tuple[np.ndarray, float, int, bool, tuple[int, ...]]] = []
    for g in groups:
        members = np.asarray(g)
        dropped[members[cut[members]]] = True  # the parts; boxes seen whole stay for NMS
        if (~cut[members]).any():  # a window saw the object whole
            continue
        h = bool(hor[members].all())
        covers.append(
            (_covering(polys[members], h), float(scores[members].max()), int(labels[g[0]]), h, tuple(g))
        )
    out = [boxes.take(np.flatnonzero(~dropped))]
    if covers:
        cp = np.stack([c[0] for c in covers])
        ch = np.asarray([c[3] for c in covers])
        c_obb = poly_to_obb(torch.from_numpy(cp.reshape(-1, 8))).numpy()
        if ch.any():  # horizontal covers as horizontal oriented boxes (exact, no angle noise)
            env = np.concatenate([cp[ch].min(1), cp[ch].max(1)], 1)
            c_obb[ch] = hbb_to_obb(torch.from_numpy(env)).numpy()
        out.append(
            JoinedBoxes(
                cp,
                c_obb,
                np.asarray([c[1] for c in covers]),
                np.asarray([c[2] for c in covers], np.int64),
                ch,
                np.full(len(covers), -1, np.int64),
                _tuples([c[4] for c in covers]),
            )
        )
    return JoinedBoxes.concat(out)


def nms_joined(boxes: JoinedBoxes, iou_threshold: float) -> JoinedBoxes:
    """Step 3: class-wise rotated NMS; the kept boxes in input order."""
    if len(boxes.scores) == 0:
        return boxes
    keep = batched_rotated_nms(
        torch.from_numpy(boxes.obb),
        torch.from_numpy(boxes.scores),
        torch.from_numpy(boxes.labels),
        iou_threshold,
    )
    return boxes.take(np.sort(keep.numpy()))


def merge_window_boxes(
    polys: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    window: np.ndarray,
    windows: np.ndarray,
    height: int,
    width: int,
    iou_threshold: float,
    *,
    horizontal: np.ndarray | None = None,
    obb: np.ndarray | None = None,
    edge_margin: float = 1.0,
) -> JoinedBoxes:
    """The whole rule (module doc): join cut boxes, then class-wise rotated NMS.

    Arguments as for ``join_cut_boxes``.
    """
    joined = join_cut_boxes(
        polys,
        scores,
        labels,
        window,
        windows,
        height,
        width,
        iou_threshold,
        horizontal=horizontal,
        obb=obb,
        edge_margin=edge_margin,
    )
    return nms_joined(joined, iou_threshold)
