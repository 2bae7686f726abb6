"""The reference's detection augmentations (flips h / v / diagonal, PolyRandomRotate) on le90 boxes,
and the COCO instance masks DetectionFilesDataModule gives Mask R-CNN."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from pycocotools import mask as mask_utils
from ssdd_fixture import SHIPS, SIZE, write_ssdd
from vitp_geo.datamodules.detection import DetectionFilesDataModule, detection_collate
from vitp_geo.datamodules.detection_augment import Augment, flip, rect_label_ids, rotate
from vitp_geo.datamodules.sampling import SamplingArgs

from vitp_geo.geometry.obb import obb_to_poly, poly_to_obb


def _quads(obb: list[list[float]]) -> torch.Tensor:
    return obb_to_poly(torch.tensor(obb)).reshape(-1, 4, 2)


def _le90(quads: torch.Tensor) -> torch.Tensor:
    return poly_to_obb(quads.reshape(-1, 8))


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("horizontal", [70.0, 20.0, 20.0, 8.0, -0.3]),  # x → W − x, the angle changes sign
        ("vertical", [30.0, 40.0, 20.0, 8.0, -0.3]),  # y → H − y, the angle changes sign
        ("diagonal", [70.0, 40.0, 20.0, 8.0, 0.3]),  # a half turn: the angle stays
    ],
)
def test_flips_give_the_hand_computed_le90_boxes(direction: str, expected: list[float]) -> None:
    image = torch.arange(60 * 100, dtype=torch.float32).reshape(1, 60, 100)
    out, quads, _ = flip(direction, image, _quads([[30.0, 20.0, 20.0, 8.0, 0.3]]))
    torch.testing.assert_close(_le90(quads), torch.tensor([expected]), atol=1e-4, rtol=0)
    dims = {"horizontal": [-1], "vertical": [-2], "diagonal": [-2, -1]}[direction]
    assert torch.equal(out, image.flip(dims))


@pytest.mark.parametrize(
    ("angle", "expected"),
    [
        # about the centre (32, 32) of a 64 px image: x' = c(x − 32) + s(y − 32) + 32,
        # y' = −s(x − 32) + c(y − 32) + 32; counter-clockwise on screen is a negative le90 angle
        (90.0, [30.0, 44.0, 20.0, 8.0, -math.pi / 2]),
        (30.0, [32 - 12 * math.sqrt(3) / 2 - 1, 32 + 6 - math.sqrt(3), 20.0, 8.0, -math.pi / 6]),
        (-30.0, [32 - 12 * math.sqrt(3) / 2 + 1, 32 - 6 - math.sqrt(3), 20.0, 8.0, math.pi / 6]),
    ],
)
def test_rotation_gives_the_hand_computed_le90_box(angle: float, expected: list[float]) -> None:
    image = torch.zeros(3, 64, 64)
    _, quads, keep, _ = rotate(angle, image, _quads([[20.0, 30.0, 20.0, 8.0, 0.0]]))
    assert keep.tolist() == [True]
    torch.testing.assert_close(_le90(quads), torch.tensor([expected]), atol=1e-4, rtol=0)


def test_rotation_drops_boxes_whose_centre_leaves_or_that_are_small() -> None:
    """mmrotate's filter: centre strictly inside the image and both sides longer than 5 px."""
    boxes = [
        [4.0, 4.0, 6.0, 6.0, 0.0],  # near a corner: a 45° turn takes its centre off the canvas
        [32.0, 32.0, 20.0, 5.0, 0.0],  # at the centre but 5 px thin: dropped
        [32.0, 32.0, 20.0, 6.0, 0.0],  # kept
    ]
    _, quads, keep, _ = rotate(45.0, torch.zeros(1, 64, 64), _quads(boxes))
    assert keep.tolist() == [False, False, True] and len(quads) == 1


def test_a_drawn_rectangle_stays_inside_its_transformed_box() -> None:
    """The image and the boxes move together: after a flip and a 37° turn, the pixels of a drawn
    rotated rectangle lie inside the turned box (1 px of bilinear blur allowed) and cover it."""
    h, w = 64, 96
    obb = [[40.0, 26.0, 30.0, 12.0, 0.4]]
    quads = _quads(obb)
    poly = shapely.Polygon(quads[0].numpy())
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inside = shapely.contains_xy(poly, xs.ravel(), ys.ravel()).reshape(h, w)
    image = torch.from_numpy(inside.astype(np.float32))[None].repeat(3, 1, 1)
    image, quads, masks = flip("vertical", image, quads, torch.from_numpy(inside[None].astype(np.uint8)))
    image, quads, keep, masks = rotate(37.0, image, quads, masks)
    assert keep.tolist() == [True] and masks is not None
    box = shapely.Polygon(quads[0].numpy())
    on = image[0] > 0.5
    cy, cx = (torch.nonzero(on).double() + 0.5).T
    assert all(
        box.buffer(1.0).contains(shapely.Point(x, y)) for x, y in zip(cx.tolist(), cy.tolist(), strict=True)
    )
    assert on.sum().item() == pytest.approx(box.area, rel=0.1)
    # the mask moved with them (nearest neighbour: the same pixels but for the blurred rim)
    assert (masks[0].bool() ^ on).sum().item() < 0.1 * on.sum().item()


def test_augment_draws_the_reference_probabilities_and_rect_classes_turn_by_quarters() -> None:
    """RRandomFlip [0.25] × 3 and PolyRandomRotate 0.5 over 4000 seeded draws; a 'rect' class forces ±90 / 180."""
    aug = Augment(("horizontal", "vertical", "diagonal"), 0.25, rotate_ratio=0.5, rect_labels=(1,))
    rng = np.random.default_rng(0)
    image = torch.zeros(1, 40, 40)
    image[0, 5, 10] = 1.0  # a marker that tells the transforms apart
    quads = _quads([[20.0, 20.0, 12.0, 8.0, 0.0]])
    counts = {"none": 0, "horizontal": 0, "vertical": 0, "diagonal": 0}
    rotated = 0
    for _ in range(4000):
        out, q, keep, _ = aug(rng, image, quads, torch.tensor([0]))
        if (
            keep.all()
            and torch.allclose(_le90(q)[0, 2:4], torch.tensor([12.0, 8.0]))
            and _le90(q)[0, 4].abs() < 1e-4
        ):
            hit = [k for k, d in [("none", []), ("horizontal", [-1]), ("vertical", [-2]), ("diagonal", [-2, -1])]
                   if torch.equal(out, image.flip(d) if d else image)]  # fmt: skip
            if hit:
                counts[hit[0]] += 1
                continue
        rotated += 1
    assert all(abs(v / 4000 - 0.125) < 0.02 for k, v in counts.items())  # 0.25 × (1 − 0.5 rotated)
    assert abs(rotated / 4000 - 0.5) < 0.03
    angles = []
    for _ in range(200):  # with a rect-class object every rotation is a quarter or half turn
        _, q, _, _ = aug(rng, image, quads, torch.tensor([1]))
        angles.append(float(_le90(q)[0, 4]))
    # a 12 × 8 box at 0 turned by quarter / half turns: le90 angle 0 or −90° exactly, nothing between
    assert all(min(abs(a), abs(a + math.pi / 2)) < 1e-4 for a in angles)
    assert any(abs(a + math.pi / 2) < 1e-4 for a in angles)
    free = [float(_le90(aug(rng, image, quads, torch.tensor([0]))[1])[0, 4]) for _ in range(200)]
    assert sum(min(abs(a), abs(a + math.pi / 2)) > 1e-2 for a in free) > 50  # other classes: any angle
    with pytest.raises(ValueError, match="rect_classes: 'silo' is not one of"):
        rect_label_ids(["silo"], ["ship", "tank"])


def test_coco_masks_come_out_with_the_boxes_and_follow_the_flips(tmp_path: Path) -> None:
    root = write_ssdd(tmp_path / "ssdd")
    layout = {"images": "JPEGImages", "annotations": "Annotations/{split}.json"}
    dm = DetectionFilesDataModule(
        str(root), "coco", ["ship"], train_split="trainval", val_split="test", layout=layout,
        masks=True, flip_directions=["vertical"], flip_ratio=1.0,
    )  # fmt: skip
    dm.setup("fit")
    for ds, flipped in ((dm.val_dataset, False), (dm.train_dataset, True)):
        for k in range(len(ds)):
            s = ds[k]
            polys = SHIPS["test" if ds is dm.val_dataset else "trainval"][s["image_id"]]
            assert s["mask"].shape == (len(polys), *SIZE) and s["mask"].dtype == torch.uint8
            for m, p, box in zip(s["mask"], polys, s["bbox_xyxy"], strict=True):
                want = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([p], *SIZE)))
                want = want[::-1] if flipped else want
                assert np.array_equal(m.numpy(), want)
                ys, xs = np.nonzero(m.numpy())
                assert (
                    xs.min() >= box[0] - 1
                    and xs.max() <= box[2]
                    and ys.min() >= box[1] - 1
                    and ys.max() <= box[3]
                )
    batch = detection_collate([dm.train_dataset[0], dm.train_dataset[1]])
    assert [tuple(m.shape) for m in batch["mask"]] == [(2, *SIZE), (1, *SIZE)]
    with pytest.raises(ValueError, match="instance masks are read from COCO"):
        DetectionFilesDataModule(str(root), "dota", ["ship"], masks=True).setup("fit")


def test_augmentations_differ_between_epochs_in_workers_and_a_seed_repeats_them(tmp_path: Path) -> None:
    """The draws come from torch's generator, which the DataLoader seeds per worker and epoch from
    the global seed: two epochs differ, the same seed gives the same epochs."""
    root = write_ssdd(tmp_path / "ssdd")
    dm = DetectionFilesDataModule(
        str(root), "coco", ["ship"], train_split="trainval", val_split="test",
        layout={"images": "JPEGImages", "annotations": "Annotations/{split}.json"}, masks=True,
        sampling=SamplingArgs(batch_size=1, num_workers=2), flip_directions=["horizontal", "vertical", "diagonal"], flip_ratio=0.25,
        rotate_ratio=0.5,
    )  # fmt: skip
    dm.setup("fit")

    def epochs(seed: int) -> list[dict[str, torch.Tensor]]:
        """Per epoch, image id → its boxes and a sample of its pixels (shuffling aside)."""
        torch.manual_seed(seed)
        loader = dm.train_dataloader()
        return [
            {
                b["image_id"][0]: torch.cat([b["bbox_xyxy"][0].flatten(), b["image"].flatten()[::97]])
                for b in loader
            }
            for _ in range(4)
        ]

    first, again = epochs(0), epochs(0)
    assert all(torch.equal(e[k], f[k]) for e, f in zip(first, again, strict=True) for k in e)
    # the epochs draw anew: some image is augmented differently in some later epoch
    assert any(not torch.equal(first[0][k], e[k]) for e in first[1:] for k in first[0])
