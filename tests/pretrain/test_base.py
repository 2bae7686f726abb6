"""The synthetic base ViT: its targets, its cache, and a run that starts from it with the ViT fixed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vitp_geo.cli.main import main
from vitp_geo.pretrain.base import BASE_SEED_OFFSET, BaseSpec, base_world, dense_targets, synthetic_base
from vitp_geo.pretrain.config import PretrainConfig

TINY = BaseSpec(scenes=3, steps=2, batch_size=4)


def test_dense_targets_are_patch_class_shares_and_centres() -> None:
    mask = np.zeros((28, 28), np.uint8)
    mask[:14, :7] = 1  # half of the top-left patch is building
    mask[14:, 14:] = 3  # the bottom-right patch is water
    fractions, counts = dense_targets(mask, np.array([[3.0, 5.0], [20.0, 2.0], [20.0, 6.0], [40.0, 1.0]]), 14)
    assert fractions.shape == (2, 2, 5) and torch.allclose(fractions.sum(-1), torch.ones(2, 2))
    assert fractions[0, 0, 1] == pytest.approx(0.5) and fractions[0, 0, 0] == pytest.approx(0.5)
    assert fractions[1, 1, 3] == pytest.approx(1.0)
    # (3, 5) is in patch (0, 0), (20, 2) and (20, 6) in (0, 1); (40, 1) lies outside the tile
    assert counts.tolist() == [[1.0, 2.0], [0.0, 0.0]]
    # a thumbnail: 2 source pixels per tile pixel, so a patch covers 28 source pixels
    _, thumb = dense_targets(np.zeros((56, 56), np.uint8), np.array([[30.0, 10.0]]), 14, scale=2)
    assert thumb.tolist() == [[0.0, 1.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="whole 14 px patches"):
        dense_targets(np.zeros((30, 30), np.uint8), np.zeros((0, 2)), 14)


def test_base_world_tiles_as_internvl_and_uses_its_own_seeds() -> None:
    from vitp_geo.synthetic.scene import generate_scene

    images, fractions, counts = base_world(TINY, 112, 14)
    assert images.shape == (3 * 5, 3, 112, 112) and images.dtype == np.uint8  # 2 x 2 tiles + thumbnail
    assert fractions.shape == (15, 8, 8, 5) and counts.shape == (15, 8, 8)
    first = generate_scene(BASE_SEED_OFFSET, 224, scene_class=0)
    assert np.array_equal(images[0], first.image[:, :112, :112])
    assert np.array_equal(images[3], first.image[:, 112:, 112:])
    # every building centre of the scene is counted once in the thumbnail, and once among the tiles
    n_buildings = sum(o["class_id"] == 1 for o in first.objects)
    assert counts[4].sum() == n_buildings == counts[:4].sum()
    # a corpus's scene 0 (seed 0 * 1000 + 0) is another scene
    assert not np.array_equal(generate_scene(0, 224, scene_class=0).image[:, :112, :112], images[0])


def test_synthetic_base_is_cached_and_rebuilt_for_other_settings(tmp_path: Path) -> None:
    logs: list[str] = []
    weights, meta, reused = synthetic_base(TINY, cache=tmp_path, log=logs.append)
    assert not reused and weights.is_file() and len(logs) == 1 and "3 scenes, 2 steps" in logs[0]
    assert meta["spec"]["scenes"] == 3 and meta["tiles"] == 15
    assert json.loads((weights.parent / "backbone.json").read_text())["arch"]
    first = load_file(weights)
    again, _, reused = synthetic_base(TINY, cache=tmp_path, log=logs.append)
    assert reused and again == weights and len(logs) == 1  # read, not trained again
    other, _, reused = synthetic_base(replace(TINY, steps=3), cache=tmp_path, log=logs.append)
    assert not reused and other.parent != weights.parent
    second = load_file(other)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ValueError, match="base scenes must be >= 1"):
        synthetic_base(replace(TINY, scenes=0), cache=tmp_path)


def test_vision_init_settings() -> None:
    cfg = PretrainConfig()
    assert cfg.vision_start == "synthetic" and cfg.frozen_vision_steps == cfg.align_steps
    assert PretrainConfig(data="r.json").vision_start == "random"
    assert PretrainConfig(data="r.json").frozen_vision_steps == 0
    assert PretrainConfig(domain="med").vision_start == "random"
    assert PretrainConfig(vision_init="random").frozen_vision_steps == 0
    assert PretrainConfig(vision_frozen_steps=5).frozen_vision_steps == 5
    assert PretrainConfig(strategy="fsdp").frozen_vision_steps == 0
    with pytest.raises(ValueError, match="vision-init must be auto, synthetic, random or a backbone"):
        PretrainConfig(vision_init="/no/such/base.safetensors").validate()
    with pytest.raises(ValueError, match="vision-frozen-steps 3 needs --strategy auto or ddp"):
        PretrainConfig(vision_frozen_steps=3, strategy="fsdp").validate()
    with pytest.raises(ValueError, match="applies to the tiny model only"):
        PretrainConfig(model_path="/m", vision_init="random").validate()


QUICK = [
    "--max-steps",
    "3",
    "--batch-size",
    "2",
    "--reliance-records",
    "8",
    "--base-scenes",
    "3",
    "--base-steps",
    "2",
]


def test_a_run_starts_from_the_base_and_keeps_the_vit_fixed_while_told(tmp_path: Path, capsys) -> None:
    fixed = tmp_path / "fixed"
    assert main(["pretrain", "--output", str(fixed), "--vision-frozen-steps", "3", *QUICK]) == 0
    out = capsys.readouterr().out
    base = next(Path(p) for p in out.split() if p.endswith("backbone.safetensors") and "synthetic-" in p)
    assert "ViT start      synthetic base" in out and "fixed for the first 3 steps" in out
    assert "trained at 0.1x the lr, warmed up over 100 steps" in out
    meta = json.loads((fixed / "backbone.json").read_text())["pretraining"]
    assert meta["vision_init"].startswith(f"synthetic base {base}") and meta["vision_frozen_steps"] == 3
    assert meta["vision_lr_scale"] == 0.1 and meta["vision_warmup_steps"] == 100
    start, after = load_file(base), load_file(fixed / "backbone.safetensors")
    assert all(torch.equal(start[k], after[k]) for k in start)  # fixed for all 3 steps: the base itself
    trained = tmp_path / "trained"
    assert (
        main(
            [
                "pretrain",
                "--output",
                str(trained),
                "--vision-frozen-steps",
                "1",
                "--vision-warmup-steps",
                "0",
                *QUICK,
            ]
        )
        == 0
    )
    moved = load_file(trained / "backbone.safetensors")
    assert any(not torch.equal(start[k], moved[k]) for k in start)  # trained from step 1 on
    # a run from random init does not start from the base
    rand = tmp_path / "random"
    assert main(["pretrain", "--output", str(rand), "--vision-init", "random", *QUICK]) == 0
    assert "ViT start      random init" in capsys.readouterr().out
    assert any(not torch.equal(start[k], v) for k, v in load_file(rand / "backbone.safetensors").items())


def test_a_backbone_file_as_start_and_a_wrong_one(tmp_path: Path, capsys) -> None:
    weights, _, _ = synthetic_base(TINY, cache=tmp_path / "cache")
    run = tmp_path / "run"
    args = [
        "pretrain",
        "--output",
        str(run),
        "--vision-init",
        str(weights),
        "--vision-frozen-steps",
        "3",
        *QUICK,
    ]
    assert main(args) == 0
    start, after = load_file(weights), load_file(run / "backbone.safetensors")
    assert all(torch.equal(start[k], after[k]) for k in start)
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 14, 14)}, str(wrong))
    assert main(["pretrain", "--output", str(tmp_path / "w"), "--vision-init", str(wrong), *QUICK]) == 2
    assert str(wrong) in capsys.readouterr().err


def test_vision_lr_settings() -> None:
    cfg = PretrainConfig()  # from the base, fixed for the alignment phase
    assert cfg.vision_lr_share == 0.1 and cfg.vision_warmup == 100
    assert PretrainConfig(vision_init="random").vision_lr_share == 1.0
    assert PretrainConfig(vision_init="random").vision_warmup == 0  # never fixed: nothing to warm up after
    assert PretrainConfig(model_path="/m").vision_lr_share == 1.0
    assert PretrainConfig(vision_lr_scale=0.5, vision_warmup_steps=7).vision_lr_share == 0.5
    assert PretrainConfig(vision_frozen_steps=0).vision_warmup == 0
    with pytest.raises(ValueError, match="vision-lr-scale must be > 0, got 0"):
        PretrainConfig(vision_lr_scale=0).validate()
    with pytest.raises(ValueError, match="vision-warmup-steps must be >= 0, got -1"):
        PretrainConfig(vision_warmup_steps=-1).validate()


class _Parts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision_model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.mlp1 = nn.Linear(4, 4)
        self.language_model = nn.Linear(4, 4)


def test_the_vits_lr_is_scaled_and_rises_from_zero_after_its_fixed_steps() -> None:
    from vitp_geo.pretrain.module import ViTPPretrainModule
    from vitp_geo.tasks.optim import lr_factor

    model = _Parts()
    module = ViTPPretrainModule(
        model,
        lr=1e-3,
        weight_decay=0.01,
        warmup_ratio=0.1,
        max_steps=100,
        vision_frozen_steps=10,
        vision_lr_scale=0.1,
        vision_warmup_steps=20,
    )
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    vision = {id(p) for p in model.vision_model.parameters()}
    groups = opt.param_groups
    assert not groups[0]["vision"]  # the first group carries the run's lr (metrics.csv logs it)
    assert {id(p) for g in groups if g["vision"] for p in g["params"]} == vision
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for step in range(60):
        full = 1e-3 * lr_factor(step, 100, 10, "cosine")
        rise = min(1.0, max(0, step - 10) / 20)
        for g in groups:
            want = full * 0.1 * rise if g["vision"] else full
            assert g["lr"] == pytest.approx(want, abs=1e-12), (step, g["vision"])
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="vision_lr_scale must be > 0"):
        ViTPPretrainModule(model, lr=1e-3, weight_decay=0, warmup_ratio=0, max_steps=1, vision_lr_scale=0)


def test_a_vit_whose_parameters_were_flattened_away_is_refused_not_trained_at_the_full_lr() -> None:
    """FSDP with use_orig_params=False leaves the ViT module without parameters of its own."""
    from vitp_geo.pretrain.module import ViTPPretrainModule

    model = _Parts()
    module = ViTPPretrainModule(
        model, lr=1e-3, weight_decay=0, warmup_ratio=0, max_steps=10, vision_lr_scale=0.1
    )
    model.vision_model = nn.Sequential()  # what a flat-parameter wrapper leaves behind
    with pytest.raises(ValueError, match=r"the ViT \(vision_model\) holds no parameters of its own"):
        module.configure_optimizers()
    # a ViT frozen for the whole run is not that: its parameters exist and simply do not train
    frozen = ViTPPretrainModule(
        _Parts(), lr=1e-3, weight_decay=0, warmup_ratio=0, max_steps=10, freeze_vision=True
    )
    opt = frozen.configure_optimizers()["optimizer"]
    assert [g["vision"] for g in opt.param_groups] == [False, False]
