"""Single-channel PNG label masks (radiograph segmentations): read as integers, write atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitp_geo.io.atomic import atomic_output

__all__ = ["PNG_MAGIC", "is_png", "read_png_mask", "write_png_mask"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    """Whether ``path`` starts with the PNG signature."""
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def read_png_mask(path: str | Path) -> np.ndarray:
    """A PNG label mask as an integer ``(H, W)`` array (palette indices or grey levels).

    Raises:
        FileNotFoundError / ValueError: missing file, not PNG, or a colour (RGB) mask.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such mask: {path}")
    if not is_png(path):
        raise ValueError(f"{path}: not a PNG file")
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise ValueError(f"{path}: label masks must be single-channel PNG (L/P/I), got mode {im.mode}")
        arr = np.asarray(im)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{path}: bad mask shape {arr.shape}")
    return arr.astype(np.int64)


def write_png_mask(mask: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W)`` integer mask as 8-bit (or 16-bit when a value exceeds 255) PNG, atomically."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be (H, W), got {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 65535):
        raise ValueError(f"{path}: mask values must be in [0, 65535], got [{mask.min()}, {mask.max()}]")
    arr = mask.astype(np.uint8) if (not mask.size or mask.max() <= 255) else mask.astype(np.uint16)
    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
