"""The DataModules' shared sampling group (``vitp_geo.datamodules.sampling``): a config's
``sampling:`` section reaches the DataModule through the real CLI path, the flat spelling of
before is refused naming the grouped key, and each module keeps its own defaults."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import vitp_geo.datamodules
from config_runs import finetune_args, refused_finetune
from lightning import LightningDataModule
from vitp_geo.datamodules.detection import DetectionFilesDataModule, GeoTiffDetectionDataModule
from vitp_geo.datamodules.folders import PairFolderChangeDataModule, TileFolderSegmentationDataModule
from vitp_geo.datamodules.geotiff import GeoTiffChangeDataModule, GeoTiffSegmentationDataModule
from vitp_geo.datamodules.medical import MedicalSliceDataModule, XraySegmentationDataModule
from vitp_geo.datamodules.sampling import FIELDS, SamplingArgs, takes_sampling
from vitp_geo.datamodules.synthetic_geotiff import write_synthetic_segmentation
from vitp_geo.datamodules.torchgeo_benchmarks import LEVIRCDDataModule, LoveDADataModule, Potsdam2DDataModule

from vitp_geo.cli import finetune
from vitp_geo.tasks.run import build_cli, load_config

GEOTIFF = "vitp_geo.datamodules.geotiff.GeoTiffSegmentationDataModule"
MODEL = """\
model:
  class_path: vitp_geo.tasks.SegmentationTask
  init_args:
    backbone: {name: vitp_tiny_patch14_112, img_size: 112}
    num_classes: 5
    head_channels: 16
"""


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return write_synthetic_segmentation(tmp_path_factory.mktemp("sampling"), n_scenes=2, size=224, seed=3)


def _config(path: Path, class_path: str, init: str) -> Path:
    body = "".join(f"    {line}\n" for line in init.splitlines())
    path.write_text(f"{MODEL}data:\n  class_path: {class_path}\n  init_args:\n{body}")
    return path


# What each module defaulted to when the settings were its own flat arguments.
DEFAULTS = {
    GeoTiffSegmentationDataModule: dict(
        patch_size=112, batch_size=8, length=None, val_fraction=0.2, num_workers=0, seed=0
    ),
    GeoTiffChangeDataModule: dict(
        patch_size=112, batch_size=8, length=None, val_fraction=0.2, num_workers=0, seed=0
    ),
    GeoTiffDetectionDataModule: dict(
        patch_size=112, batch_size=8, length=None, val_fraction=0.25, num_workers=0, seed=0
    ),
    TileFolderSegmentationDataModule: dict(patch_size=512, batch_size=8, num_workers=0, seed=0),
    PairFolderChangeDataModule: dict(patch_size=256, batch_size=8, num_workers=0, seed=0),
    LoveDADataModule: dict(patch_size=512, batch_size=8, num_workers=0, seed=0),
    Potsdam2DDataModule: dict(patch_size=512, length=None, batch_size=8, num_workers=0, seed=0),
    LEVIRCDDataModule: dict(patch_size=266, batch_size=8, num_workers=0, seed=0),
    MedicalSliceDataModule: dict(val_fraction=0.2, patch_size=224, batch_size=8, num_workers=0, seed=0),
    XraySegmentationDataModule: dict(patch_size=256, batch_size=8, num_workers=0, seed=0),
    DetectionFilesDataModule: dict(batch_size=2, num_workers=0),
}


def test_each_module_keeps_its_defaults(scenes, tmp_path: Path) -> None:  # noqa: ANN001
    for cls, defaults in DEFAULTS.items():
        assert dict(cls.SAMPLING) == defaults, cls.__name__
    built = {
        GeoTiffSegmentationDataModule(str(scenes.images), labels=str(scenes.labels)): DEFAULTS[
            GeoTiffSegmentationDataModule
        ],
        LEVIRCDDataModule(str(tmp_path)): DEFAULTS[LEVIRCDDataModule],
        Potsdam2DDataModule(str(tmp_path)): DEFAULTS[Potsdam2DDataModule],
        DetectionFilesDataModule(str(tmp_path), "dota", ["ship"]): DEFAULTS[DetectionFilesDataModule],
    }
    for dm, defaults in built.items():
        assert {k: getattr(dm, k) for k in defaults} == defaults, type(dm).__name__
        assert dm.sampling == SamplingArgs(**defaults)
    # a field given replaces that default only
    dm = LEVIRCDDataModule(str(tmp_path), sampling=SamplingArgs(batch_size=3))
    assert (dm.patch_size, dm.batch_size, dm.num_workers, dm.seed) == (266, 3, 0, 0)


def test_every_datamodule_takes_the_group_and_none_of_its_fields_flat() -> None:
    found = []
    for info in pkgutil.iter_modules(vitp_geo.datamodules.__path__, "vitp_geo.datamodules."):
        for _, cls in inspect.getmembers(importlib.import_module(info.name), inspect.isclass):
            if (
                issubclass(cls, LightningDataModule)
                and cls.__module__ == info.name
                and not cls.__name__.startswith("_")
            ):
                params = inspect.signature(cls.__init__).parameters
                assert "sampling" in params and not set(FIELDS) & set(params), cls.__name__
                assert takes_sampling(f"{cls.__module__}.{cls.__name__}")
                found.append(cls)
    assert set(found) == set(DEFAULTS)
    assert not takes_sampling("torchgeo.datamodules.LoveDADataModule")  # torchgeo's own: flat


@pytest.mark.parametrize(
    ("class_path", "init", "key"),
    [
        (GEOTIFF, "images: {tmp}\nbatch_size: 8", "batch_size"),
        (
            "vitp_geo.datamodules.torchgeo_benchmarks.LEVIRCDDataModule",
            "root: {tmp}\npatch_size: 266",
            "patch_size",
        ),
        (
            "vitp_geo.datamodules.torchgeo_benchmarks.Potsdam2DDataModule",
            "root: {tmp}\nlength: 100",
            "length",
        ),
        (
            "vitp_geo.datamodules.medical.MedicalSliceDataModule",
            "root: {tmp}\nval_fraction: 0.3",
            "val_fraction",
        ),
        ("vitp_geo.datamodules.folders.PairFolderChangeDataModule", "root: {tmp}\nseed: 1", "seed"),
        (
            "vitp_geo.datamodules.detection.DetectionFilesDataModule",
            "root: {tmp}\nformat: dota\nclasses: [ship]\nnum_workers: 4",
            "num_workers",
        ),
    ],
)
def test_a_flat_config_key_is_refused_with_its_grouped_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], class_path: str, init: str, key: str
) -> None:
    old = _config(tmp_path / "old.yaml", class_path, init.format(tmp=tmp_path))
    assert refused_finetune(old, tmp_path / "o", capsys) == [
        f"vitp-geo finetune: error: {old}: data.init_args.{key} is the old spelling: the sampling settings "
        f"are grouped; use data.init_args.sampling.{key}"
    ]


def test_a_flat_keyword_or_an_unused_field_in_python_names_the_group(scenes, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(
        TypeError,
        match=r"GeoTiffSegmentationDataModule\(batch_size=...\) is the old spelling: the sampling settings are "
        r"grouped; use sampling.batch_size: GeoTiffSegmentationDataModule\(..., sampling=SamplingArgs\(batch_size=...\)\)",
    ):
        GeoTiffSegmentationDataModule(str(scenes.images), labels=str(scenes.labels), batch_size=8)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"LEVIRCDDataModule\(patch_size=...\) is the old spelling"):
        LEVIRCDDataModule(str(tmp_path), patch_size=266)  # type: ignore[call-arg]
    with pytest.raises(
        ValueError,
        match=r"LEVIRCDDataModule does not use sampling.length \(it takes patch_size, batch_size, num",
    ):
        LEVIRCDDataModule(str(tmp_path), sampling=SamplingArgs(length=4))
    with pytest.raises(ValueError, match=r"DetectionFilesDataModule does not use sampling.patch_size"):
        DetectionFilesDataModule(str(tmp_path), "dota", ["ship"], sampling=SamplingArgs(patch_size=512))
    with pytest.raises(TypeError, match=r"sampling has no field 'lenght'"):
        LEVIRCDDataModule(str(tmp_path), sampling={"lenght": 4})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sampling takes a SamplingArgs \(or its dict\), got 8"):
        LEVIRCDDataModule(str(tmp_path), sampling=8)  # type: ignore[arg-type]
    # its dict, as a config dict handed over in Python holds it
    dm = LEVIRCDDataModule(str(tmp_path), sampling={"batch_size": 2})  # type: ignore[arg-type]
    assert (dm.patch_size, dm.batch_size) == (266, 2)


def test_a_sampling_section_reaches_the_datamodule_through_the_cli(scenes, tmp_path: Path) -> None:  # noqa: ANN001
    init = f"images: {scenes.images}\nlabels: {scenes.labels}\nsampling: {{patch_size: 56, batch_size: 4, length: 12, seed: 7}}"
    path = _config(tmp_path / "run.yaml", GEOTIFF, init)
    args = finetune_args("segmentation", path, tmp_path / "o")
    cfg = finetune.apply_overrides(load_config(path), args)
    dm = build_cli(cfg, [], tmp_path / "o", str(path)).datamodule
    assert type(dm) is GeoTiffSegmentationDataModule
    assert (dm.patch_size, dm.batch_size, dm.length, dm.seed) == (56, 4, 12, 7)
    assert (dm.val_fraction, dm.num_workers) == (0.2, 0)  # not given: the module's defaults
    dm.setup("fit")
    assert len(dm.train_batch_sampler) == 3  # 12 tiles per epoch, 4 a batch
    assert dm.train_batch_sampler.generator.initial_seed() == 7
    assert all(len(batch) == 4 for batch in dm.train_batch_sampler)
    # --batch-size goes into the group and keeps the rest of it
    args.batch_size = 3
    cfg = finetune.apply_overrides(load_config(path), args)
    assert cfg["data"]["init_args"]["sampling"] == dict(patch_size=56, batch_size=3, length=12, seed=7)
    dm = build_cli(cfg, [], tmp_path / "o", str(path)).datamodule
    assert (dm.patch_size, dm.batch_size, dm.length, dm.seed) == (56, 3, 12, 7)
    # a misspelt field, and one the module does not use, are named
    for section, message in (
        ("sampling: {lenght: 12}", "lenght"),
        ("sampling: {patch_size: 56, length: 12}", "LEVIRCDDataModule does not use sampling.length"),
    ):
        class_path = (
            GEOTIFF if "lenght" in section else "vitp_geo.datamodules.torchgeo_benchmarks.LEVIRCDDataModule"
        )
        head = (
            f"images: {scenes.images}\nlabels: {scenes.labels}"
            if class_path == GEOTIFF
            else f"root: {tmp_path}"
        )
        bad = _config(tmp_path / "bad.yaml", class_path, f"{head}\n{section}")
        with pytest.raises(ValueError, match=message):
            build_cli(load_config(bad), [], tmp_path / "o", str(bad))


def test_batch_size_flag_stays_flat_for_torchgeo_datamodules(tmp_path: Path) -> None:
    args = finetune_args("segmentation", tmp_path / "x.yaml", tmp_path / "o")
    args.batch_size = 3
    for class_path, expected in (
        ("torchgeo.datamodules.LoveDADataModule", {"root": "r", "batch_size": 3}),
        (
            "vitp_geo.datamodules.torchgeo_benchmarks.LoveDADataModule",
            {"root": "r", "sampling": {"batch_size": 3}},
        ),
    ):
        cfg = {"model": {"init_args": {}}, "data": {"class_path": class_path, "init_args": {"root": "r"}}}
        assert finetune.apply_overrides(cfg, args)["data"]["init_args"] == expected
