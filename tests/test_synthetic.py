import numpy as np
import rasterio
from shapely.geometry import Point

from vitp_geo.synthetic import CLASS_NAMES, generate_change_pair, generate_scene, write_scene


def test_same_seed_same_scene_and_different_seed_differs():
    a, b, c = generate_scene(3, 128), generate_scene(3, 128), generate_scene(4, 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_objects_lie_on_their_mask_class():
    scene = generate_scene(7, 256, scene_class=0)
    buildings = [o for o in scene.objects if o["class_name"] == "building"]
    assert len(buildings) >= 3
    inv = ~scene.transform
    for obj in buildings:
        centroid = obj["geometry"].centroid  # map coordinates
        col, row = inv @ (centroid.x, centroid.y)
        assert scene.mask[int(row), int(col)] == CLASS_NAMES.index("building")
        assert obj["geometry"].contains(Point(centroid.x, centroid.y))


def test_change_mask_marks_exactly_the_class_differences():
    pair = generate_change_pair(11, 192)
    diff = pair.before.mask != pair.after.mask
    assert np.array_equal(diff, pair.change_mask.astype(bool))
    assert 0 < pair.change_mask.mean() < 0.5


def test_written_scene_keeps_georeferencing(tmp_path):
    scene = generate_scene(5, 96, pixel_size=2.0)
    paths = write_scene(scene, tmp_path)
    with rasterio.open(paths.image) as src:
        assert src.crs.to_string() == scene.crs
        assert src.transform == scene.transform
        assert np.array_equal(src.read(), scene.image)
    with rasterio.open(paths.mask) as src:
        assert np.array_equal(src.read(1), scene.mask)


def test_objects_geopackage_is_version_1_2_for_gdal_3_6(tmp_path):
    import sqlite3

    paths = write_scene(generate_scene(6, 64), tmp_path)
    with sqlite3.connect(paths.objects) as db:
        assert db.execute("pragma user_version").fetchone()[0] == 10200
        assert db.execute("select count(*) from objects").fetchone()[0] == len(generate_scene(6, 64).objects)


def _tiles(seeds, size=224, tile=112):
    import numpy as np

    from vitp_geo.synthetic.scene import generate_scene

    ims, ms = [], []
    for s in seeds:
        sc = generate_scene(s, size, scene_class=s % 3)
        for r in range(0, size, tile):
            for c in range(0, size, tile):
                ims.append(sc.image[:, r : r + tile, c : c + tile])
                ms.append(sc.mask[r : r + tile, c : c + tile])
    return np.stack(ims), np.stack(ms)


def test_raw_pixels_do_not_solve_the_world_but_class_evidence_would():
    """Colours overlap: a linear probe on raw 14x14 patches stays <= 0.45 mIoU at 16 labelled
    tiles, while the same probe on features that carry the class reaches far above it."""
    import numpy as np
    import torch

    from vitp_geo.evaluation.probe import patch_labels, probe_miou, raw_patch_features

    train_im, train_m = _tiles(range(100, 104))  # 16 labelled tiles
    test_im, test_m = _tiles(range(200, 216))  # 64 held-out tiles
    y = torch.from_numpy(patch_labels(train_m, 14, 5)).reshape(-1)
    yt = torch.from_numpy(patch_labels(test_m, 14, 5)).reshape(-1)
    x = torch.from_numpy(raw_patch_features(train_im, 14)).reshape(len(y), -1)
    xt = torch.from_numpy(raw_patch_features(test_im, 14)).reshape(len(yt), -1)
    raw = probe_miou(x, y, xt, yt, 5)
    assert raw <= 0.45, f"raw-pixel probe reaches {raw:.3f} mIoU: the world is too easy"
    rng = np.random.default_rng(0)  # class evidence + noise: the probe itself can succeed

    def oracle(labels):
        return (
            torch.nn.functional.one_hot(labels, 5).float()
            + 0.15 * torch.from_numpy(rng.normal(size=(len(labels), 5))).float()
        )

    assert probe_miou(oracle(y), y, oracle(yt), yt, 5) > 0.9
