"""Constants shared across the package: one definition each (import them from here)."""

from __future__ import annotations

# Label value the language-model loss ignores (prompt, image and padding tokens): PyTorch's
# cross-entropy default, as in transformers and InternVL.
IGNORE_INDEX = -100

# ImageNet channel statistics, which InternViT / InternVL normalise with: on 0–1 inputs ...
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# ... and the same on the 0–255 rendered inputs that the fine-tuning datamodules feed.
IMAGENET_MEAN_255: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD_255: tuple[float, float, float] = (58.395, 57.12, 57.375)

# GDAL block cache (MB) while streaming a scene or writing a COG: bounded and independent of the
# scene size (GDAL's default, 5 % of RAM, would end up holding most of a big input).
GDAL_CACHE_MB = 64
