"""Strip-wise polygonisation, side by side: strips joined across their borders vs one pass.

``polygonize_rows`` reads a class map in strips and joins the regions that strip borders cut.
The join used to test every joined part against every cut piece (quadratic in the number of
pieces); it is now one spatial-index query. This prints the time of the strip-wise run against
one pass over the whole raster (same polygons, no joining), on a speckled class map where most
regions cross a border. Aim: ratio ≤ 2 at 32-row strips. Run::

    .venv/bin/python benchmarks/polygonize.py              # 768², 32-row strips
    .venv/bin/python benchmarks/polygonize.py --size 1536 --strip 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from affine import Affine

from vitp_geo.io.polygonize import polygonize_rows


def _run(cls: np.ndarray, conf: np.ndarray, strip: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    frame = polygonize_rows(
        lambda a, b: (cls[a:b], conf[a:b]),
        height=cls.shape[0],
        width=cls.shape[1],
        transform=Affine(1, 0, 0, 0, -1, 0),
        crs=None,
        class_names=["a", "b"],
        nodata=255,
        strip_rows=strip,
    )
    return time.perf_counter() - t0, len(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=768, help="raster side in pixels")
    parser.add_argument("--strip", type=int, default=32, help="rows per strip")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cls = (rng.random((args.size, args.size)) > 0.55).astype(np.uint8)
    conf = rng.random(cls.shape).astype(np.float32)
    t_one, n_one = _run(cls, conf, args.size)
    t_strips, n_strips = _run(cls, conf, args.strip)
    assert n_one == n_strips, (n_one, n_strips)
    print(f"{args.size}² speckled map, {n_one} polygons")
    print(f"one pass        {t_one:8.2f} s")
    print(f"{args.strip:>3}-row strips  {t_strips:8.2f} s   ratio {t_strips / t_one:.2f}x (aim <= 2)")


if __name__ == "__main__":
    main()
