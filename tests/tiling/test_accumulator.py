"""The strip accumulator equals a brute-force weighted average over the full scene."""

from __future__ import annotations

import numpy as np

from vitp_geo.tiling.accumulator import StripAccumulator
from vitp_geo.tiling.blending import blend_weights
from vitp_geo.tiling.planner import plan_windows


def test_streaming_blend_matches_full_array_blend() -> None:
    rng = np.random.default_rng(0)
    H, W, K, T = 150, 170, 3, 48
    plan = plan_windows(H, W, T, 0.25)
    w = blend_weights(T, T, "cosine", overlap_px=12)
    full_acc, full_w = np.zeros((K, H, W)), np.zeros((H, W))
    acc = StripAccumulator(W, K, chunk_width=32)
    out = np.full((K, H, W), np.nan)
    seen = np.zeros((H, W), int)
    for i, r in enumerate(plan.row_offsets):
        for j, c in enumerate(plan.col_offsets):
            scores = rng.random((K, T, T)).astype(np.float32)
            valid = rng.random((T, T)) > 0.1  # some nodata pixels: no vote
            if (i, j) == (0, 1):
                valid[:] = False  # an all-nodata window
            full_acc[:, r : r + T, c : c + T] += scores * (w * valid)
            full_w[r : r + T, c : c + T] += w * valid
            acc.add(r, c, scores, w * valid)
            nxt = plan.col_offsets[j + 1] if j + 1 < len(plan.col_offsets) else None
            if nxt is not None:  # finalise chunks left of the next window mid-row, as the engine does
                for blk in acc.finalize(plan.row_end(i), before_col=nxt):
                    h, ww = blk.valid.shape
                    out[:, blk.row0 : blk.row0 + h, blk.col0 : blk.col0 + ww] = np.where(
                        blk.valid, blk.scores, -1
                    )
                    seen[blk.row0 : blk.row0 + h, blk.col0 : blk.col0 + ww] += 1
        for blk in acc.finalize(plan.row_end(i)):
            h, ww = blk.valid.shape
            out[:, blk.row0 : blk.row0 + h, blk.col0 : blk.col0 + ww] = np.where(blk.valid, blk.scores, -1)
            seen[blk.row0 : blk.row0 + h, blk.col0 : blk.col0 + ww] += 1
    assert acc.chunks == {}  # nothing left open
    assert seen.max() == 1  # every pixel finalised at most once
    expected = np.where(full_w > 0, full_acc / np.where(full_w > 0, full_w, 1), -1)
    finalised = seen == 1
    assert finalised.sum() >= (full_w > 0).sum()  # every voted pixel was finalised
    np.testing.assert_allclose(out[:, finalised], expected[:, finalised], rtol=1e-5, atol=1e-6)


def test_state_roundtrip_continues_identically() -> None:
    rng = np.random.default_rng(1)
    a, b = StripAccumulator(100, 2, 16), StripAccumulator(100, 2, 16)
    s1, w1 = rng.random((2, 40, 40)).astype(np.float32), rng.random((40, 40)).astype(np.float32)
    a.add(0, 10, s1, w1)
    list(a.finalize(30))
    b.load_state({k: v.copy() for k, v in a.state().items()})
    s2 = rng.random((2, 40, 40)).astype(np.float32)
    for acc in (a, b):
        acc.add(30, 20, s2, w1)
    ra, rb = list(a.finalize(100)), list(b.finalize(100))
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb, strict=True):
        assert (x.row0, x.col0) == (y.row0, y.col0)
        np.testing.assert_array_equal(x.scores, y.scores)
