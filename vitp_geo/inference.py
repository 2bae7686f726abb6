"""One scene, one call: ``infer_scene`` runs a fine-tuned checkpoint over a GeoTIFF scene.

What ``vitp-geo infer`` does for a GeoTIFF, as a library call that the CLI, the catalogue runner
(``vitp_geo.catalogue``) and notebooks share: the model card decides the task (segmentation,
change or detection), the scene is checked against it (bands, value type) before any work, the
device is chosen (CUDA when available, one per rank), and the scene streams through
``tiling.engine.segment_scene`` or ``tiling.detection_outputs.detect_scene_to_vector``.

A caller that runs many scenes loads the model once (``load_model``) and passes it to every call::

    model = load_model("model.ckpt")
    for scene in scenes:
        summary = infer_scene(scene, model, SceneOutputs(class_map=out / f"{scene.stem}.tif"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vitp_geo.tiling.blending import BlendMode
from vitp_geo.tiling.progress import ProgressMode, report_phase

# torch, rasterio and the engines are imported when a scene runs, so that the settings and output
# types serve argument checks (``vitp-geo infer --help``) without loading torch
if TYPE_CHECKING:
    import torch

    from vitp_geo.io.model_card import ModelCard
    from vitp_geo.tiling.distributed import RankInfo
    from vitp_geo.tiling.engine import InferenceSummary

__all__ = [
    "InferSettings",
    "LoadedModel",
    "ModulePredictor",
    "SceneOutputs",
    "SceneSummary",
    "infer_scene",
    "load_model",
]


@dataclass(frozen=True)
class InferSettings:
    """How a scene is cut, blended and written (the ``infer`` flags of the same names).

    Attributes:
        tile_size: window side in pixels (None: the checkpoint's tile size).
        overlap: share of a window shared with each neighbour, in [0, 1).
        batch_size: windows per model call.
        blend: ``BlendMode`` value of the seam blending (segmentation and change).
        bands: 1-based scene bands to read (None: the checkpoint's).
        min_area: polygons smaller than this many pixels are dropped (segmentation vectors).
        min_score: lowest detection score written (detection).
        probability_dtype: ``float32`` or ``float16`` probabilities.
        stretch: render a scene of another value type than the model was trained on through
            the 2–98 % stretch rule instead of refusing it.
        progress: window progress: ``"bar"``, ``"jsonl"`` or ``"none"`` (``tiling.progress``).
        checkpoint_every_s: resume-state period of the segmentation engine (0: every window row).
    """

    tile_size: int | None = None
    overlap: float = 0.25
    batch_size: int = 8
    blend: str = BlendMode.COSINE.value
    bands: tuple[int, ...] | None = None
    min_area: int = 0
    min_score: float = 0.3
    probability_dtype: str = "float32"
    stretch: bool = False
    progress: ProgressMode = "none"
    checkpoint_every_s: float = 60.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the flag for a value out of range."""
        if self.tile_size is not None and self.tile_size < 1:
            raise ValueError(f"--tile-size must be >= 1, got {self.tile_size}")
        if not 0 <= self.overlap < 1:  # NaN fails too
            raise ValueError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.min_area < 0:
            raise ValueError(f"--min-area must be >= 0, got {self.min_area}")
        if not 0 <= self.min_score <= 1:  # NaN fails too
            raise ValueError(f"--min-score must be in [0, 1], got {self.min_score}")
        BlendMode(self.blend)  # ValueError naming the value


@dataclass(frozen=True)
class SceneOutputs:
    """Files one scene writes: ``class_map`` (segmentation / change) or ``vector`` (detection)."""

    class_map: Path | None = None
    probabilities: Path | None = None
    vector: Path | None = None


@dataclass
class LoadedModel:
    """A checkpoint loaded once for many scenes: the module, its card and the resume identity."""

    module: torch.nn.Module
    card: ModelCard
    checkpoint: Path
    model_id: str  # path, size and mtime: what the engine's resume check compares


@dataclass
class SceneSummary:
    """What ``infer_scene`` did.

    Attributes:
        task: the model's task (``segmentation``, ``change`` or ``detection``).
        outputs: the files written (class map, probabilities, vector, in that order).
        engine: the streaming engine's summary (segmentation and change).
        detections: detections written per class name (detection).
    """

    task: str
    outputs: list[Path] = field(default_factory=list)
    engine: InferenceSummary | None = None
    detections: dict[str, int] | None = None

    def lines(self) -> list[str]:
        """Human-readable summary lines (what ``vitp-geo infer`` prints on stderr)."""
        if self.engine is not None:
            return self.engine.lines()
        counts = self.detections or {}
        return [f"{sum(counts.values())} detections {counts} -> {self.outputs[0] if self.outputs else ''}"]


class ModulePredictor:
    """Wrap an ``nn.Module`` as the engine's predictor on one device."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device = module.to(device).eval(), device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.module(x.to(self.device, non_blocking=True)).float().cpu()


def load_model(checkpoint: str | Path) -> LoadedModel:
    """Load a checkpoint written by ``vitp-geo finetune`` for ``infer_scene`` (once per process)."""
    from vitp_geo.tasks.loading import load_inference_model

    ckpt = Path(checkpoint)
    module, card = load_inference_model(ckpt)
    st = ckpt.stat()
    return LoadedModel(module, card, ckpt, f"{ckpt.resolve()}:{st.st_size}:{st.st_mtime_ns}")


def default_device(rank: RankInfo | None = None) -> torch.device:
    """CUDA device ``rank % count`` when CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        rank_id = 0 if rank is None else rank.rank
        return torch.device("cuda", rank_id % torch.cuda.device_count())
    return torch.device("cpu")


def infer_scene(
    scene: str | Path,
    model: LoadedModel | str | Path,
    outputs: SceneOutputs,
    *,
    after: str | Path | None = None,
    settings: InferSettings = InferSettings(),
    resume: bool = False,
    rank: RankInfo | None = None,
    device: torch.device | None = None,
) -> SceneSummary | None:
    """Run a checkpoint over one GeoTIFF scene and write its outputs (module doc).

    Args:
        scene: the GeoTIFF (the "before" image of a change model).
        model: a ``load_model`` result, or the checkpoint path to load.
        outputs: the files to write: ``class_map`` (required for segmentation and change; with
            optional ``probabilities`` and polygon ``vector``), or ``vector`` alone (detection).
        after: the "after" image (change models only).
        settings: tiling, blending and output settings.
        resume: continue an interrupted segmentation run with the same settings.
        rank: this process's rank when windows are sharded over several processes (all call
            this; default: the only one).
        device: where the model runs (default: ``default_device(rank)``).

    Returns:
        The summary (None on ranks other than the writer).

    Raises:
        ValueError: outputs or flags that do not fit the model's task, a scene the model cannot
            read (bands, value type), or a window too large to allocate.
        FileNotFoundError: a missing scene or checkpoint.
    """
    from vitp_geo.tiling.distributed import RankInfo

    settings.check()
    rank = RankInfo() if rank is None else rank
    scene = Path(scene)
    after = None if after is None else Path(after)
    for path in (scene, after):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"scene not found: {path}")
    if isinstance(model, str | Path):
        if rank.is_writer:
            report_phase(settings.progress, "load")
        model = load_model(model)
    device = default_device(rank) if device is None else device
    if model.card.task == "detection":
        return _detect(scene, model, outputs, after, settings, resume, rank, device)
    return _segment(scene, model, outputs, after, settings, resume, rank, device)


def _segment(
    scene: Path,
    model: LoadedModel,
    outputs: SceneOutputs,
    after: Path | None,
    settings: InferSettings,
    resume: bool,
    rank: RankInfo,
    device: torch.device,
) -> SceneSummary | None:
    from vitp_geo.io.qgis_styles import ClassStyle
    from vitp_geo.tiling.engine import EngineConfig, SegmentationOutputs, segment_scene

    card, ckpt = model.card, model.checkpoint
    if outputs.class_map is None:
        raise ValueError(f"{ckpt} is a {card.task} model: give the class map to write with --out")
    scenes = [scene]
    if card.task == "change":
        if after is None:
            raise ValueError(f"{ckpt} is a change model: give the second date with --after")
        scenes.append(after)
    elif after is not None:
        raise ValueError(f"--after is only for change models; {ckpt} is a {card.task} model")
    bands = card.scene_bands(settings.bands, str(ckpt))
    rule = card.render_rule(bands)
    # a clear band-count or value-type error before any work; raw band values or the render rule
    raw = all([card.check_scene(path, bands, ckpt.name, stretch=settings.stretch) for path in scenes])
    cfg = EngineConfig(
        tile_size=card.tile_size if settings.tile_size is None else settings.tile_size,
        overlap=settings.overlap,
        batch_size=settings.batch_size,
        blend=BlendMode(settings.blend),
        activation="softmax",
        checkpoint_every_s=settings.checkpoint_every_s,
        progress=settings.progress,
    )
    check_window_fits(cfg.tile_size, (len(bands) if raw else 3) * len(scenes) + len(card.class_names), card)
    summary = segment_scene(
        scenes,
        ModulePredictor(model.module, device),
        ClassStyle(card.class_names, card.class_colors),
        SegmentationOutputs(
            class_map=outputs.class_map,
            probabilities=outputs.probabilities,
            vector=outputs.vector,
            probability_dtype=settings.probability_dtype,
            min_area_px=settings.min_area,
        ),
        rule=rule,
        mean=card.mean,
        std=card.std,
        config=cfg,
        raw_input=raw,
        resume=resume,
        model_id=model.model_id,
        rank=rank,
    )
    if summary is None:
        return None
    return SceneSummary(card.task, [Path(p) for p in summary.outputs], engine=summary)


def check_window_fits(tile: int, values_per_pixel: int, card: ModelCard) -> None:
    """Refuse a window side whose arrays cannot be allocated, before any work file is started."""
    from vitp_geo.io.memory import check_fits

    check_fits(
        4 * values_per_pixel * tile * tile,
        f"--tile-size {tile}: one window",
        f"choose a smaller --tile-size (the checkpoint was trained on {card.tile_size})",
    )


def _detect(
    scene: Path,
    model: LoadedModel,
    outputs: SceneOutputs,
    after: Path | None,
    settings: InferSettings,
    resume: bool,
    rank: RankInfo,
    device: torch.device,
) -> SceneSummary:
    """A detection checkpoint: windows → merged oriented polygons → styled GeoPackage."""
    from vitp_geo.io.qgis_styles import ClassStyle
    from vitp_geo.tiling.detection_outputs import DetectionRunConfig, detect_scene_to_vector

    card, ckpt = model.card, model.checkpoint
    if rank.world > 1:
        raise ValueError(f"{ckpt} is a detection model: detection inference runs on one device (--devices 1)")
    if outputs.vector is None:
        raise ValueError(f"{ckpt} is a detection model: give the GeoPackage to write with --vector")
    for flag, value in (
        ("out", outputs.class_map),
        ("after", after),
        ("probabilities", outputs.probabilities),
    ):
        if value is not None:
            raise ValueError(f"--{flag} is not for detection models ({ckpt} writes --vector only)")
    for flag, given in (  # class-map settings a detection run would silently ignore
        ("--resume", resume),
        ("--blend", settings.blend != BlendMode.COSINE.value),
        ("--min-area", settings.min_area != 0),
    ):
        if given:
            raise ValueError(f"{flag} is for segmentation and change models; {ckpt} is a detection model")
    bands = card.scene_bands(settings.bands, str(ckpt))
    raw = card.check_scene(scene, bands, ckpt.name, stretch=settings.stretch)
    tile = card.tile_size if settings.tile_size is None else settings.tile_size
    check_window_fits(tile, len(bands), card)
    frame = detect_scene_to_vector(
        scene,
        model.module,
        ClassStyle(card.class_names, card.class_colors),
        outputs.vector,
        rule=card.render_rule(bands),
        mean=card.mean,
        std=card.std,
        raw_input=raw,
        config=DetectionRunConfig(
            tile_size=tile,
            overlap=settings.overlap,
            batch_size=settings.batch_size,
            min_score=settings.min_score,
            progress=settings.progress,
        ),
        device=device,
    )
    counts = frame["class_name"].value_counts().to_dict() if len(frame) else {}
    return SceneSummary(card.task, [outputs.vector], detections={str(k): int(v) for k, v in counts.items()})
