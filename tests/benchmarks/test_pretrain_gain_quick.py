"""benchmarks/pretrain_gain.py: the pass rule, the shuffled-image control and a --quick run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from load_script import load_script

from vitp_geo.pretrain.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "pretrain_gain.py"


pg = load_script("benchmarks/pretrain_gain.py", "pretrain_gain_bench")


# --------------------------------------------------------------------------------------------------
# Pass rule


def _probe(values: dict[str, dict[int, list[float]]]) -> dict[str, dict[int, list[float]]]:
    """Fill every arm and tile count; arms not given get a flat 0.5."""
    n = len(next(iter(next(iter(values.values())).values())))
    return {
        arm: {k: values.get(arm, {}).get(k, [0.5] * n) for k in pg.SHOTS}
        for arm in (*pg.ARMS, *pg.REFERENCES)
    }


def test_beats_is_mean_over_two_sample_stds():
    assert pg.beats([0.10, 0.12, 0.11, 0.09])  # mean 0.105, std 0.013
    assert not pg.beats([0.10, -0.05, 0.20, 0.0])  # mean 0.0625, std 0.11
    assert not pg.beats([0.3])  # one pair has no std: cannot pass
    assert not pg.beats([])
    assert not pg.beats([0.1, float("nan"), 0.1])
    # exactly 2 std is not "more than" 2 std: mean 1, sample std 0.5
    assert not pg.beats([0.5, 1.0, 1.5], sigmas=2.0)
    assert pg.beats([0.5, 1.0, 1.5], sigmas=1.9)


def test_pass_rule_passes_when_one_candidate_beats_all_rivals_at_1_and_4_tiles():
    up = [0.60, 0.62, 0.61, 0.63, 0.60, 0.62]  # rivals sit at 0.5: differences ~0.11 ± 0.01
    verdict = pg.pass_rule(_probe({"vitp_r075_p1": {1: up, 4: up, 16: up}}))
    assert verdict.passed
    assert verdict.per_arm == {"vitp_r075_p1": True, "vitp_r075_p025": False}
    assert "ViTP r=0.75 p=1 met the rule" in verdict.format()
    # both tile counts x three rivals x two candidates are reported
    assert len(verdict.lines) == 2 * 3 * 2


def test_pass_rule_fails_on_noisy_differences_even_with_a_positive_mean():
    noisy = [0.70, 0.45, 0.65, 0.40, 0.70, 0.50]  # mean +0.067 over the 0.5 rivals, std 0.13
    verdict = pg.pass_rule(_probe({c: {1: noisy, 4: noisy} for c in pg.CANDIDATES}))
    assert not verdict.passed
    assert "FAIL" in verdict.format()


def test_pass_rule_needs_every_rival_and_both_tile_counts():
    up = [0.60, 0.62, 0.61, 0.63, 0.60, 0.62]
    # the supervised baseline is as good as the candidate at 1 tile: fails there
    probe = _probe({"vitp_r075_p1": {1: up, 4: up}, "supervised": {1: up}})
    assert not pg.pass_rule(probe).per_arm["vitp_r075_p1"]
    # an advantage at 16 tiles only does not count
    probe = _probe({"vitp_r075_p1": {16: up}})
    assert not pg.pass_rule(probe).passed
    # beating ViTP r=0 or raw pixels is not required
    probe = _probe({"vitp_r075_p1": {1: up, 4: up}, "vitp_r0": {1: up, 4: up}, pg.RAW: {1: up, 4: up}})
    assert pg.pass_rule(probe).per_arm["vitp_r075_p1"]


def test_pass_rule_pairs_by_seed_and_draw():
    # the candidate is always 0.01 above its rival of the same pair, while both vary a lot across
    # pairs: paired differences have no spread, so it passes (an unpaired test would not)
    rival = [0.2, 0.8, 0.4, 0.6, 0.3, 0.7]
    cand = [x + 0.01 for x in rival]
    probe = _probe({"vitp_r075_p1": {1: cand, 4: cand}, **{r: {1: rival, 4: rival} for r in pg.RIVALS}})
    assert pg.pass_rule(probe).per_arm["vitp_r075_p1"]
    # shifting the rival's pairs breaks the pairing and the rule fails
    probe["base"] = {k: rival[1:] + rival[:1] for k in pg.SHOTS}
    assert not pg.pass_rule(probe).per_arm["vitp_r075_p1"]


# --------------------------------------------------------------------------------------------------
# The rule's power: the oracle


def test_oracle_features_are_one_hot_patch_classes():
    labels = np.array([[0, 2, 1], [3, 3, 0]])
    f = pg.oracle_patch_features(labels, 4)
    assert f.shape == (2, 3, 4) and f.dtype.is_floating_point
    assert (f.argmax(-1).numpy() == labels).all() and (f.sum(-1) == 1).all()


def test_oracle_probe_reads_every_class_it_was_shown_and_none_it_was_not():
    # the ridge probe on oracle features is exact on the classes of its labelled tiles, and can never
    # predict a class it was not shown: why a single labelled tile caps every backbone
    import torch

    from vitp_geo.evaluation.probe import fit_ridge_probe, predict_probe

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=(6, 16))  # classes 0-2 only in the labelled tiles
    test = np.concatenate([y[:2], np.full((1, 16), 3)])  # the test adds class 3
    f = pg.oracle_patch_features
    w = fit_ridge_probe(f(y, 4).reshape(-1, 4), torch.from_numpy(y.reshape(-1)), 4)
    pred = predict_probe(w, f(test, 4).reshape(-1, 4)).numpy().reshape(test.shape)
    assert (pred[:2] == test[:2]).all()
    assert (pred[2] != 3).all()
    score = pg.probe_scores(f(y, 4), y, {"t": (f(test, 4), test)}, [np.arange(6)], (6,), 4)["t"][6][0]
    assert 0.5 < score < 0.75  # class 3 scores 0, and its patches land on a class they are not


def test_rule_power_says_where_even_the_oracle_cannot_pass():
    noisy = [0.95, 0.55, 0.9, 0.5, 0.95, 0.6]  # mean +0.24 over 0.5 rivals, std 0.21
    steady = [0.9, 0.88, 0.91, 0.92, 0.89, 0.9]
    power = pg.rule_power(_probe({pg.ORACLE: {1: noisy, 4: steady, 16: steady}}))
    assert power.attainable == {1: False, 4: True}
    text = power.format()
    assert "At 1 tile the rule **cannot** be met" in text and "At 4 tiles the rule **can** be met" in text
    assert len(power.lines) == len(pg.RULE_SHOTS) * len(pg.RIVALS)
    # one rival the oracle does not beat is enough to make a tile count unattainable
    probe = _probe({pg.ORACLE: {1: steady, 4: steady}, "supervised": {4: [0.88, 0.9, 0.85, 0.95, 0.8, 0.9]}})
    assert pg.rule_power(probe).attainable == {1: True, 4: False}


def test_power_over_label_sets_counts_redrawn_sets_that_meet_the_rule():
    import torch

    rng = np.random.default_rng(0)
    # 12 pool tiles of 16 patches: half hold one class, half all four, so a single labelled tile is
    # a lottery and four tiles nearly always show every class
    pool_y = np.stack([np.full(16, i % 4) if i % 2 else np.arange(16) % 4 for i in range(12)])
    test_y = rng.integers(0, 4, size=(8, 16))
    onehot = (pg.oracle_patch_features(pool_y, 4), pg.oracle_patch_features(test_y, 4))
    features = {}
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        noise = (torch.randn(12, 16, 6, generator=g), torch.randn(8, 16, 6, generator=g))
        features[pg.ORACLE, seed] = onehot
        features["vitp_r075_p1", seed] = onehot  # as good as the oracle
        features["vitp_r075_p025", seed] = noise  # exactly a rival's features: never beats it
        for rival in pg.RIVALS:
            features[rival, seed] = noise
    shares = pg.power_over_label_sets(features, pool_y, test_y, (0, 1), 3, 12, 4)
    assert set(shares) == set(pg.RULE_SHOTS)
    for k in pg.RULE_SHOTS:
        assert shares[k]["vitp_r075_p1"] == shares[k][pg.ORACLE]
        assert shares[k]["vitp_r075_p025"] == 0.0
    assert shares[4][pg.ORACLE] == 1.0  # four tiles show every class: always clear of noise
    assert shares[1][pg.ORACLE] < shares[4][pg.ORACLE]  # one tile: a lottery over which classes it has


def test_redrawn_label_sets_keep_the_protocols_own_draws():
    first = pg.draw_orders(0, 3, 32)
    assert all((a == b).all() for a, b in zip(first, pg.draw_orders(0, 3, 32, redraw=0), strict=True))
    other = pg.draw_orders(0, 3, 32, redraw=1)
    assert not all((a == b).all() for a, b in zip(first, other, strict=True))
    assert all(sorted(o.tolist()) == list(range(32)) for o in other)


# --------------------------------------------------------------------------------------------------
# Reusing finished runs


def _finished(out: Path, want: dict, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbone.safetensors").write_text(text)
    pg._write_stamp(out, want)


def test_a_finished_run_is_set_aside_not_deleted_until_its_replacement_is_finished(tmp_path):
    out, old, new = tmp_path / "arm", {"steps": 10}, {"steps": 20}
    _finished(out, old, "old weights")
    assert pg.reuse_or_set_aside(out, old, fresh=False)  # same settings: reused as it is
    assert (out / "backbone.safetensors").read_text() == "old weights"

    assert not pg.reuse_or_set_aside(out, new, fresh=False)  # other settings: room for a new run
    prev = tmp_path / "arm.previous"
    assert (prev / "backbone.safetensors").read_text() == "old weights" and list(out.iterdir()) == []
    (out / "half.ckpt").write_text("interrupted")  # the new run dies before it is stamped

    # the interrupted folder is cleared, and the finished old run is kept (or moved back if wanted)
    assert not pg.reuse_or_set_aside(out, new, fresh=False)
    assert (prev / "backbone.safetensors").read_text() == "old weights" and list(out.iterdir()) == []
    (out / "half.ckpt").write_text("interrupted again")
    assert pg.reuse_or_set_aside(out, old, fresh=False)
    assert (out / "backbone.safetensors").read_text() == "old weights" and not prev.exists()

    # a finished replacement drops the one it replaced
    assert not pg.reuse_or_set_aside(out, new, fresh=False)
    _finished(out, new, "new weights")
    pg.drop_previous(out)
    assert not prev.exists() and (out / "backbone.safetensors").read_text() == "new weights"


def test_fresh_redoes_a_matching_run_but_keeps_it_until_the_new_one_is_finished(tmp_path):
    out, want = tmp_path / "arm", {"steps": 10}
    _finished(out, want, "old weights")
    assert not pg.reuse_or_set_aside(out, want, fresh=True)
    assert (tmp_path / "arm.previous" / "backbone.safetensors").read_text() == "old weights"


# --------------------------------------------------------------------------------------------------
# Shuffled-image control


def _png(path: Path, size: tuple[int, int], value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _tiny_corpus(root: Path) -> Path:
    """Two entries over one images/ folder: 6 small tiles, 3 large ones, 3 pairs, 1 lone size."""
    small = [f"images/a/t{i}.png" for i in range(6)]
    large = [f"images/b/t{i}.png" for i in range(3)]
    lone = "images/c/odd.png"
    for i, p in enumerate(small):
        _png(root / p, (16, 16), 10 * i)
    for i, p in enumerate(large):
        _png(root / p, (24, 24), 100 + 10 * i)
    _png(root / lone, (20, 12), 250)
    pairs = [[f"images/p/before{j}.png", f"images/p/after{j}.png"] for j in range(3)]
    for j, (b, a) in enumerate(pairs):
        _png(root / b, (16, 16), 30 + j)
        _png(root / a, (16, 16), 60 + j)

    def rec(rid: str, image, task: str) -> dict:
        return {
            "id": rid,
            "image": image,
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": f"a {rid}"}],
            "task": task,
        }

    main = [rec(f"{p}-{t}", p, t) for p in small + large for t in ("counting", "presence")]
    main += [rec(f"pair{j}", pair, "change") for j, pair in enumerate(pairs)]
    main.append(rec("lone", lone, "presence"))
    align = [rec(f"{p}-classes", p, "classes") for p in small]
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in main))
    (root / "alignment.jsonl").write_text("".join(json.dumps(r) + "\n" for r in align))
    recipe = root / "recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "align": {"root": ".", "annotation": "alignment.jsonl", "repeat_time": 4.0},
                "main": {"root": ".", "annotation": "annotations.jsonl", "repeat_time": 1.0},
            }
        )
    )
    return recipe


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _as_tuple(image) -> tuple[str, ...]:
    return (image,) if isinstance(image, str) else tuple(image)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_corpus_gives_no_record_its_own_image(tmp_path, seed):
    from PIL import Image

    recipe = _tiny_corpus(tmp_path / "corpus")
    before = _tree_hash(tmp_path / "corpus")
    new_recipe, report = pg.write_shuffled_corpus(recipe, tmp_path / "shuffled", seed=seed)

    assert _tree_hash(tmp_path / "corpus") == before  # the original is untouched
    assert pg.records_with_own_image(recipe, new_recipe) == 0
    assert report.own_image_records == 0
    assert report.dropped_records == 1  # the lone 20x12 tile has no partner of its size
    mapping: dict[tuple[str, ...], tuple[str, ...]] = {}
    for name in ("annotations.jsonl", "alignment.jsonl"):
        old = {r["id"]: r for r in _rows(tmp_path / "corpus" / name)}
        new = _rows(tmp_path / "shuffled" / name)
        assert "lone" not in {r["id"] for r in new}
        assert len(new) == len(old) - (name == "annotations.jsonl")
        for r in new:
            o = old[r["id"]]
            assert r["conversations"] == o["conversations"] and r["task"] == o["task"]
            src, dst = _as_tuple(o["image"]), _as_tuple(r["image"])
            assert type(r["image"]) is type(o["image"])
            assert len(dst) == len(src) and not set(src) & set(dst)  # another source tile
            for a, b in zip(src, dst, strict=True):  # same image size, image by image
                with Image.open(tmp_path / "corpus" / a) as ia, Image.open(tmp_path / "shuffled" / b) as ib:
                    assert ia.size == ib.size
            # one mapping for the whole corpus: every record of a tile moves to the same other tile
            assert mapping.setdefault(src, dst) == dst
    # a permutation: every (non-lone) image tuple is used exactly once as a target
    assert sorted(mapping.values()) == sorted(mapping.keys())
    assert len(mapping) == 6 + 3 + 3


def test_derangement_map_is_a_derangement():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 12))
        tuples = [(f"x{i}.png",) for i in range(n)]
        m = pg.derangement_map({"g": tuples}, seed=trial)
        assert sorted(m) == sorted(tuples) and sorted(m.values()) == sorted(tuples)
        assert all(k != v for k, v in m.items())
    assert pg.derangement_map({"g": [("only.png",)]}, seed=0) == {}  # a group of one cannot move
    # tuples sharing a path with each other can never be swapped
    with pytest.raises(RuntimeError, match="no derangement"):
        pg.derangement_map({"g": [("a.png", "b.png"), ("a.png", "c.png")]}, seed=0, tries=20)


# --------------------------------------------------------------------------------------------------
# Read-out parts


def test_corruptions_change_tiles_deterministically():
    from vitp_geo.synthetic.scene import generate_scene

    img = generate_scene(123, 112).image[None]
    for kind in pg.CORRUPTIONS:
        a, b = pg.corrupt(img, kind, seed=3), pg.corrupt(img, kind, seed=3)
        assert a.shape == img.shape and a.dtype == np.uint8
        assert np.array_equal(a, b)
        assert np.abs(a.astype(int) - img.astype(int)).mean() > 1.0, kind
    with pytest.raises(ValueError, match="unknown corruption"):
        pg.corrupt(img, "fog")


def test_evaluation_scenes_are_not_pretraining_scenes():
    pg.check_seeds_disjoint([pg.EVAL_SEED_BASE, pg.EVAL_SEED_BASE + 5], [0, 1, 2])
    with pytest.raises(ValueError, match="also pretraining"):
        pg.check_seeds_disjoint([1005], [0, 1])


# --------------------------------------------------------------------------------------------------
# The --quick protocol end to end


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _mean(cell: str) -> float:
    return float(cell.split("±")[0])


@pytest.mark.slow
def test_quick_protocol_runs_every_arm(tmp_path):
    work, out = tmp_path / "work", tmp_path / "gain.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--work", str(work), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    md = out.read_text()
    assert md in proc.stdout  # the printed report is the written one
    assert pg.PASS_RULE in proc.stdout

    # main table: every arm + the raw-pixel row, probe/fine-tune in [0, 1], finite drops
    rows = {}
    for line in md.splitlines():
        cells = _cells(line) if line.startswith("| ") else []
        if cells and cells[0] in pg.LABELS.values():
            rows.setdefault(cells[0], cells)
    assert set(rows) == set(pg.LABELS.values())
    references = {pg.LABELS[a] for a in pg.REFERENCES}
    for label, cells in rows.items():
        assert len(cells) == 10
        for cell in cells[1:4] + ([cells[4]] if label not in references else []):
            assert 0.0 <= _mean(cell) <= 1.0, (label, cell)
        if label == pg.LABELS[pg.ORACLE]:
            assert cells[4:9] == ["—"] * 5  # no fine-tune, no pixels to corrupt
            continue
        for cell in cells[5:9]:
            assert math.isfinite(_mean(cell)) and -1.0 <= _mean(cell) <= 1.0
    # the oracle (true patch classes) is read best at 16 tiles: above every backbone and raw pixels
    oracle16 = _mean(rows[pg.LABELS[pg.ORACLE]][3])
    assert all(oracle16 > _mean(cells[3]) for label, cells in rows.items() if label != pg.LABELS[pg.ORACLE])
    for arm in pg.VITP_ARMS:  # the pretrained arms report their final image gain
        assert math.isfinite(float(rows[pg.LABELS[arm]][9].split()[0]))

    # every number is kept, and the verdict is the pass rule applied to the paired differences
    results = json.loads((work / "results.json").read_text())
    probe = {a: {int(k): v for k, v in by_k.items()} for a, by_k in results["probe"].items()}
    for arm in (*pg.ARMS, *pg.REFERENCES):
        for k in pg.SHOTS:
            assert len(probe[arm][k]) == 1 and 0.0 <= probe[arm][k][0] <= 1.0
    verdict = pg.pass_rule(probe)
    assert results["verdict"]["passed"] == verdict.passed
    power = pg.rule_power(probe)  # one pair: not even the oracle can pass
    assert (
        results["rule_power"]["attainable"]
        == {"1": False, "4": False}
        == {str(k): v for k, v in power.attainable.items()}
    )
    assert "Can the rule be met at all? The oracle" in md and power.format() in md
    shares = results["rule_power"]["share_of_label_sets"]
    assert set(shares) == {"1", "4"}
    assert all(set(by_arm) == {pg.ORACLE, *pg.CANDIDATES} for by_arm in shares.values())
    assert all(v == 0.0 for by_arm in shares.values() for v in by_arm.values())  # one pair: never
    assert "Share of 2 redrawn label sets" in md
    assert not verdict.passed  # one seed x one draw: no std, the rule cannot pass
    assert "**FAIL**" in md and "Paired differences" in md

    # the shuffled control really trained on deranged images; the supervised arm on the corpus's tiles
    seed_dir = work / "seed0"
    assert (
        pg.records_with_own_image(
            seed_dir / "corpus" / "recipe.json", seed_dir / "corpus_shuffled" / "recipe.json"
        )
        == 0
    )
    shuffled_cfg = json.loads((seed_dir / "shuffled" / "backbone.json").read_text())["pretraining"]
    assert shuffled_cfg["data"] == str(seed_dir / "corpus_shuffled" / "recipe.json")
    assert shuffled_cfg["max_steps"] == 10
    for arm, settings in pg.VITP_ARMS.items():
        meta = json.loads((seed_dir / arm / "backbone.json").read_text())["pretraining"]
        assert all(meta[k] == v for k, v in settings.items()), arm
    # every pretrained arm, the shuffled control too, starts from the synthetic base, as the base arm is
    assert (
        shuffled_cfg["vision_init"].startswith("synthetic base ") and shuffled_cfg["vision_frozen_steps"] == 6
    )
    # then at the default's share of the lr, its warm-up scaled with the steps as the phase is (100 of 1,000)
    assert shuffled_cfg["vision_lr_scale"] == 0.1 and shuffled_cfg["vision_warmup_steps"] == 1
    assert shuffled_cfg["vision_init"].split()[2] == str(pg.base_weights(PretrainConfig()))
    note = next(n for n in results["notes"] if n.startswith("seed 0: supervised arm"))
    n_tiles = int(note.split(" scene tiles")[0].split()[-1])
    assert f"{n_tiles}/{n_tiles} identical" in note
