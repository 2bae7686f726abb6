"""What every builder shares while a corpus is written: image output, the seeded RNG, the summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vitp_geo.instruct.records import IMAGE_PLACEHOLDER, InstructionRecord


@dataclass
class BuildSummary:
    """Counts reported at the end of a build."""

    tiles_written: int = 0
    images_written: int = 0
    tiles_skipped: Counter[str] = field(default_factory=Counter)
    records_per_task: Counter[str] = field(default_factory=Counter)
    records_per_modality: Counter[str] = field(default_factory=Counter)
    geometries_repaired: int = 0
    objects_dropped: Counter[str] = field(default_factory=Counter)

    def add_records(self, records: list[InstructionRecord]) -> None:
        for rec in records:
            self.records_per_task[rec.task] += 1
            self.records_per_modality[rec.modality] += 1

    @property
    def n_records(self) -> int:
        return sum(self.records_per_task.values())

    def format(self) -> str:
        """A human-readable multi-line report."""
        lines = [f"tiles written: {self.tiles_written} ({self.images_written} image files)"]
        skipped = sum(self.tiles_skipped.values())
        lines.append(f"tiles skipped: {skipped}")
        lines += [f"  {why}: {n}" for why, n in sorted(self.tiles_skipped.items())]
        if self.geometries_repaired:
            lines.append(f"invalid geometries repaired: {self.geometries_repaired}")
        for why, n in sorted(self.objects_dropped.items()):
            lines.append(f"objects dropped ({why}): {n}")
        lines.append(f"records: {self.n_records}")
        lines += [f"  {task}: {n}" for task, n in sorted(self.records_per_task.items())]
        lines.append(
            "modalities: " + ", ".join(f"{m}={n}" for m, n in sorted(self.records_per_modality.items()))
        )
        return "\n".join(lines)


class BuildContext:
    """Writes images under ``<root>/images`` and hands out record ids; one per corpus build.

    Args:
        root: the (temporary) corpus folder; images go to ``root/images/…``.
        rng: the seeded generator every builder draws from, in source order.
    """

    def __init__(self, root: Path, rng: np.random.Generator, origin_base: str | Path | None = None) -> None:
        self.root = root
        self.origin_base = Path(origin_base).resolve() if origin_base is not None else None
        self.rng = rng
        self.summary = BuildSummary()
        self._saved: dict[Hashable, str] = {}
        self._origins: dict[str, dict[str, object]] = {}  # image path → where its tile lies
        self._ids: Counter[str] = Counter()

    def save_image(
        self,
        rel: str,
        rgb: np.ndarray,
        key: Hashable | None = None,
        origin: dict[str, object] | None = None,
    ) -> str:
        """Save (3, H, W) uint8 as PNG at ``images/<rel>``; returns the path relative to the root.

        A second call with the same ``key`` returns the first path without writing again (builders
        that share a raster tile share its image). ``origin`` (``SceneRaster.tile_origin``) says
        where the tile lies; every record about the image then carries it as ``origin``.
        """
        if key is not None and key in self._saved:
            return self._saved[key]
        if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected a (3, H, W) uint8 image, got {rgb.shape} {rgb.dtype}")
        path = self.root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0))).save(path)
        out = path.relative_to(self.root).as_posix()
        if origin is not None:
            self._origins[out] = self._relative_scene(origin)
        self.summary.images_written += 1
        if key is not None:
            self._saved[key] = out
        return out

    def _relative_scene(self, origin: dict[str, object]) -> dict[str, object]:
        scene = Path(str(origin["scene"]))
        if self.origin_base is not None and scene.resolve().is_relative_to(self.origin_base):
            return {**origin, "scene": scene.resolve().relative_to(self.origin_base).as_posix()}
        return origin

    def record(
        self, stem: str, images: list[str], question: str, answer: str, task: str, modality: str
    ) -> InstructionRecord:
        """One question/answer record with the right number of ``<image>`` placeholders."""
        if len(images) == 1:
            prefix = f"{IMAGE_PLACEHOLDER}\n"
        else:
            prefix = "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(len(images)))
        base = f"{stem}_{task}"
        self._ids[base] += 1
        rid = base if self._ids[base] == 1 else f"{base}_{self._ids[base]}"
        origins = [self._origins.get(i) for i in images]
        extra: dict[str, object] = {}
        if images and all(o is not None for o in origins):
            extra["origin"] = origins[0] if len(origins) == 1 else origins
        return InstructionRecord(
            id=rid,
            images=list(images),
            conversations=[{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}],
            task=task,
            modality=modality,
            extra=extra,
        )
