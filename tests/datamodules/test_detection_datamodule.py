"""GeoTIFF + vector detection datamodule: oriented ground truth from the synthetic buildings."""

from __future__ import annotations

import copy
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from vitp_geo.datamodules.detection import GeoTiffDetectionDataModule, detection_collate
from vitp_geo.datamodules.sampling import SamplingArgs
from vitp_geo.datamodules.synthetic_geotiff import write_synthetic_detection

from vitp_geo.geometry.obb import poly_to_obb


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return write_synthetic_detection(tmp_path_factory.mktemp("det"), n_scenes=2, size=448, seed=4)


def test_tiles_hold_the_buildings_as_exact_oriented_boxes(folders) -> None:  # noqa: ANN001
    dm = GeoTiffDetectionDataModule(
        str(folders.images),
        str(folders.vectors),
        classes=["building"],
        sampling=SamplingArgs(patch_size=112, length=10),
        flips=False,
    )
    dm.setup("fit")
    assert dm.classes == ["building"]
    scene = dm.scenes[0]  # type: ignore[index]
    frame = gpd.read_file(Path(folders.vectors) / "scene_0_objects.gpkg")
    with rasterio.open(scene.path) as src:
        inv = ~src.transform
    truth = [
        shapely.affinity.affine_transform(g, [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])
        for g, c in zip(frame.geometry, frame["class_name"], strict=True)
        if c == "building"
    ]
    checked = 0
    for k, (si, row, col) in enumerate(dm.val_dataset.tiles):
        if si != 0:
            continue
        s = dm.val_dataset[k]
        assert s["image"].shape == (3, 112, 112) and s["image"].dtype == torch.float32
        assert s["bbox_xyxyxyxy"].shape[0] == s["bbox_xyxy"].shape[0] == s["label"].shape[0]
        for quad in s["bbox_xyxyxyxy"]:
            pts = quad.reshape(4, 2).numpy() + [col, row]
            poly = shapely.Polygon(pts)
            inside = [t for t in truth if t.within(shapely.box(col, row, col + 112, row + 112))]
            for t in inside:
                if t.intersection(poly).area / t.union(poly).area > 0.99:  # a whole building: exact
                    checked += 1
    assert checked >= 1
    # (N, 8) corners → normalised oriented boxes, the detector's targets
    obb = poly_to_obb(dm.val_dataset[0]["bbox_xyxyxyxy"].reshape(-1, 8))
    assert (obb[:, 2] >= obb[:, 3]).all()


def test_splits_are_disjoint_and_empty_tiles_collate(folders) -> None:  # noqa: ANN001
    dm = GeoTiffDetectionDataModule(
        str(folders.images), str(folders.vectors), classes=["building"], sampling=SamplingArgs(patch_size=112)
    )
    dm.setup("fit")
    for si, _row, col in dm.train_dataset.tiles:
        cut = dm._split(dm.scenes[si])  # type: ignore[index]
        assert col + 112 <= cut
    assert all(col >= dm._split(dm.scenes[si]) for si, _, col in dm.val_dataset.tiles)  # type: ignore[index]
    empty = {
        "image": torch.zeros(3, 112, 112),
        "bbox_xyxy": torch.zeros(0, 4),
        "bbox_xyxyxyxy": torch.zeros(0, 8),
    }
    empty["label"] = torch.zeros(0, dtype=torch.int64)
    batch = detection_collate([dm.train_dataset[0], empty])
    assert batch["image"].shape == (2, 3, 112, 112)
    assert isinstance(batch["bbox_xyxy"], list) and batch["bbox_xyxy"][1].shape == (0, 4)


def test_unknown_classes_are_left_out_and_bad_input_is_named(folders, tmp_path) -> None:  # noqa: ANN001
    dm = GeoTiffDetectionDataModule(
        str(folders.images), str(folders.vectors), sampling=SamplingArgs(patch_size=112)
    )
    dm.setup("fit")
    assert "building" in dm.classes  # type: ignore[operator]
    with pytest.raises(FileNotFoundError, match="nope"):
        GeoTiffDetectionDataModule(str(tmp_path / "nope"), str(folders.vectors))
    small = GeoTiffDetectionDataModule(
        str(folders.images), str(folders.vectors), sampling=SamplingArgs(patch_size=400)
    )
    with pytest.raises(ValueError, match="too small"):
        small.setup("fit")


def test_torchgeo_datasets_map_classes_by_name() -> None:
    from torchgeo.datasets import DOTA, VHR10
    from vitp_geo.datamodules.detection import TorchGeoDetection

    class FakeDota(torch.utils.data.Dataset):  # what torchgeo 0.8.1's DOTA.__getitem__ returns
        classes = DOTA.classes

        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> dict:
            quads = torch.tensor([[0, 0, 10, 0, 10, 5, 0, 5], [20, 20, 30, 22, 29, 27, 19, 25.0]])
            labels = torch.tensor([DOTA.classes.index("plane"), DOTA.classes.index("helipad")])
            return {"image": torch.full((3, 32, 32), 255.0), "bbox": quads, "labels": labels}

    ds = TorchGeoDetection(FakeDota(), ["Helipad", "small-vehicle", "plane"], mean=[255.0] * 3, std=[2.0] * 3)
    s = ds[0]
    assert s["label"].tolist() == [2, 0]  # by name, whatever torchgeo's order
    assert s["bbox_xyxy"][1].tolist() == [19, 20, 30, 27] and float(s["image"].abs().max()) == 0
    only_plane = TorchGeoDetection(FakeDota(), ["plane"])[0]  # a v1.0-style list: helipad dropped
    assert only_plane["label"].tolist() == [0] and only_plane["bbox_xyxyxyxy"].shape == (1, 8)
    vhr = TorchGeoDetection(FakeDota(), ["vehicle", "ships"], source_classes=VHR10.categories)
    assert vhr.lookup[VHR10.categories.index("ships")] == 1 and vhr.lookup[0] == -1  # background
    with pytest.raises(ValueError, match="none of"):
        TorchGeoDetection(FakeDota(), ["cat"])


def _torchgeo_dota_layout(root: Path) -> list[list[tuple[list[float], str]]]:
    """torchgeo 0.8.1's DOTA layout, as its class reads it: ``samples.csv`` (image_path,
    annotation_path, split, version) + ``<split>/images/*.png`` + ``<split>/annotations/version<v>/*.txt``
    (DOTA labelTxt lines, with the two header lines on one file). Returns the objects per image."""
    import csv

    from PIL import Image

    rng = np.random.default_rng(3)
    objects = [
        [([10, 12, 40, 14, 38, 30, 9, 28], "plane"), ([50, 50, 70, 52, 69, 66, 49, 64], "small-vehicle")],
        [([5, 5, 25, 5, 25, 20, 5, 20], "helipad"), ([30, 40, 60, 42, 58, 60, 28, 58], "plane")],
    ]
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "annotations" / "version2.0").mkdir(parents=True)
    rows = []
    for i, objs in enumerate(objects):
        stem = f"P{i:04d}"
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(
            root / "train" / "images" / f"{stem}.png"
        )
        header = "imagesource:GoogleEarth\ngsd:0.146\n" if i == 0 else ""
        lines = "".join(f"{' '.join(str(v) for v in c)} {n} 0\n" for c, n in objs)
        ann = root / "train" / "annotations" / "version2.0" / f"{stem}.txt"
        ann.write_text(header + lines)
        rows.append([f"train/images/{stem}.png", f"train/annotations/version2.0/{stem}.txt", "train", "2.0"])
    with open(root / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "annotation_path", "split", "version"])
        w.writerows(rows)
    return objects


def test_torchgeo_dota_on_disk_maps_classes_by_name(tmp_path: Path) -> None:
    """torchgeo's own DOTA loader over files in its on-disk layout, through TorchGeoDetection."""
    from torchgeo.datasets import DOTA
    from vitp_geo.datamodules.detection import TorchGeoDetection

    objects = _torchgeo_dota_layout(tmp_path)
    dota = DOTA(root=tmp_path, split="train", version="2.0", bbox_orientation="oriented")
    classes = ["helipad", "plane", "small-vehicle"]  # another order than torchgeo's 18 names
    ds = TorchGeoDetection(dota, classes)
    assert len(ds) == len(objects)
    for i, objs in enumerate(objects):
        s = ds[i]
        assert s["label"].tolist() == [classes.index(n) for _, n in objs]
        torch.testing.assert_close(
            s["bbox_xyxyxyxy"], torch.tensor([c for c, _ in objs], dtype=torch.float32)
        )
        assert s["image"].shape == (3, 96, 96)
    only_plane = TorchGeoDetection(dota, ["plane"])[1]  # a shorter list drops the other classes
    assert only_plane["label"].tolist() == [0] and only_plane["bbox_xyxyxyxy"].shape == (1, 8)


def test_torchgeo_vhr10_on_disk_maps_classes_by_name(tmp_path: Path) -> None:
    """torchgeo's own VHR10 loader over NWPU VHR-10's layout (``NWPU VHR-10 dataset/positive image
    set/NNN.jpg`` + COCO ``annotations.json`` with 0-based image ids, categories after background)."""
    import json

    from PIL import Image
    from torchgeo.datasets import VHR10
    from vitp_geo.datamodules.detection import TorchGeoDetection

    base = tmp_path / "NWPU VHR-10 dataset"
    (base / "positive image set").mkdir(parents=True)
    (tmp_path / "NWPU VHR-10 dataset.zip").write_bytes(b"")  # the archive torchgeo checks for (no md5)
    names = ["airplane", "ship", "storage tank", "baseball diamond", "tennis court", "basketball court",
             "ground track field", "harbor", "bridge", "vehicle"]  # fmt: skip
    boxes = [[(8, 10, 20, 12, "ship"), (40, 30, 16, 20, "vehicle")], [(5, 6, 30, 24, "airplane")]]
    rng = np.random.default_rng(5)
    images, anns = [], []
    for i, objs in enumerate(boxes):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            base / "positive image set" / f"{i + 1:03d}.jpg"
        )
        images.append({"id": i, "file_name": f"{i + 1:03d}.jpg", "height": 64, "width": 64})
        for x, y, w, h, n in objs:
            anns.append({
                "id": len(anns), "image_id": i, "category_id": names.index(n) + 1, "bbox": [x, y, w, h],
                "area": w * h, "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })  # fmt: skip
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    (base / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    vhr = VHR10(root=tmp_path, split="positive")
    with pytest.warns(UserWarning, match=r"VHR10 classes not in the class list.*: ships, storage tank"):
        TorchGeoDetection(vhr, ["vehicle", "airplane", "ship"])  # DOTA's spelling: torchgeo says "ships"
    classes = ["vehicle", "airplane", "ships"]
    ds = TorchGeoDetection(vhr, classes)
    for i, objs in enumerate(boxes):
        s = ds[i]
        assert s["label"].tolist() == [classes.index("ships" if n == "ship" else n) for *_, n in objs]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _ in objs], dtype=torch.float32)
        torch.testing.assert_close(s["bbox_xyxy"], expected)


def test_the_card_records_the_value_type_the_detector_was_trained_on(folders) -> None:  # noqa: ANN001
    """Issue 20: detection cards had no dtype, so infer fed a detector trained on uint8 a uint16
    scene (0 detections instead of 13, exit 0). The card now says uint8, as segmentation's does."""
    from types import SimpleNamespace

    from vitp_geo.tasks.args import BackboneArgs, InputArgs
    from vitp_geo.tasks.detection import ObjectDetectionTask

    dm = GeoTiffDetectionDataModule(str(folders.images), str(folders.vectors), classes=["building"])
    assert dm.raw_dtype == "uint8"
    task = ObjectDetectionTask(
        backbone=BackboneArgs(name="vitp_tiny_patch14_112", img_size=112),
        num_classes=1,
        fpn_channels=32,
        representation=64,
        inputs=InputArgs(mean=[0.0, 0.0, 0.0], std=[255.0, 255.0, 255.0]),
    )
    task._trainer = SimpleNamespace(datamodule=dm)  # type: ignore[assignment]
    card = task.model_card()
    assert card.render == {"raw": True, "dtype": "uint8"} and card.trained_dtype == "uint8"


def _flips_by_position(dm: GeoTiffDetectionDataModule, epochs: int) -> list[list[int]]:
    """Per epoch, the flip (0 none, 1 horizontal, 2 vertical, 3 both) of each batch in loader order,
    found by matching each image against the four flips of every training tile."""
    ref = copy.copy(dm.train_dataset)
    ref.flips = False
    variants = []
    for k in range(len(ref)):
        base = ref[k]["image"]
        variants.append([base, base.flip(-1), base.flip(-2), base.flip(-1).flip(-2)])
    loader = dm.train_dataloader()
    out = []
    for _ in range(epochs):
        seen = []
        for batch in loader:
            img = batch["image"][0]
            found = [(k, f) for k, v in enumerate(variants) for f in range(4) if torch.equal(v[f], img)]
            assert len({f for _, f in found}) == 1, found  # every tile tells its flips apart
            seen.append(found[0][1])
        out.append(seen)
    return out


def test_flips_differ_between_workers_and_epochs_and_a_seed_repeats_them(folders) -> None:  # noqa: ANN001
    def dm(seed: int) -> GeoTiffDetectionDataModule:
        d = GeoTiffDetectionDataModule(
            str(folders.images),
            str(folders.vectors),
            classes=["building"],
            sampling=SamplingArgs(patch_size=112, batch_size=1, length=16, num_workers=2, seed=seed),
        )
        d.setup("fit")
        return d

    first, second = _flips_by_position(dm(3), 2)
    # worker 0 takes batches 0, 2, 4, ..., worker 1 batches 1, 3, 5, ...
    assert first[0::2] != first[1::2] and second[0::2] != second[1::2]
    assert first != second  # a new epoch draws new flips
    assert len(set(first)) > 1
    assert _flips_by_position(dm(3), 2) == [first, second]  # a fixed seed repeats them
    assert _flips_by_position(dm(4), 1)[0] != first
