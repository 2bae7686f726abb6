"""Visual Robustness Learning: counts, order, positions, masks, labels, batches, p = 0, reference mode."""

from __future__ import annotations

import math

import pytest
import torch

from vitp_geo.vlm.vrl import kept_count, visual_robustness_drop


def _batch(image_counts: list[int], text_before: int = 3, text_after: int = 4, dim: int = 5):
    """Right-padded batch whose embeddings encode (sample, position) so moves are traceable."""
    lengths = [text_before + n + text_after for n in image_counts]
    b, length = len(image_counts), max(lengths) + 2
    embeds = torch.zeros(b, length, dim)
    mask = torch.zeros(b, length, dtype=torch.long)
    labels = torch.full((b, length), -100)
    image = torch.zeros(b, length, dtype=torch.bool)
    for i, (n, ln) in enumerate(zip(image_counts, lengths, strict=True)):
        mask[i, :ln] = 1
        image[i, text_before : text_before + n] = True
        labels[i, text_before + n : ln] = torch.arange(text_after) + 1000 * (i + 1)
        embeds[i, :ln, 0] = torch.arange(ln, dtype=torch.float) + 1  # 1-based original position
        embeds[i, :ln, 1] = i
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    return embeds, mask, labels, position_ids, image, lengths


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.3, 0.9])
def test_counts_order_positions_masks_labels_with_unequal_samples(ratio):
    counts = [48, 16, 10, 0]  # several tiles, one tile, odd count, text-only
    embeds, mask, labels, pos, image, lengths = _batch(counts)
    g = torch.Generator().manual_seed(0)
    res = visual_robustness_drop(embeds, mask, labels, pos, image, ratio=ratio, prob=1.0, generator=g)
    expected_kept = [math.ceil(round((1 - ratio) * n, 6)) for n in counts]
    assert res.kept_per_sample.tolist() == expected_kept
    assert res.total_per_sample.tolist() == counts
    assert res.inputs_embeds.shape[1] == max(
        ln - n + k for ln, n, k in zip(lengths, counts, expected_kept, strict=True)
    )
    for i, (n, ln, k) in enumerate(zip(counts, lengths, expected_kept, strict=True)):
        new_len = ln - n + k
        m = res.attention_mask[i]
        assert m[:new_len].eq(1).all() and m[new_len:].eq(0).all()  # compacted, right-padded
        orig = res.inputs_embeds[i, :new_len, 0].long() - 1  # original positions of survivors
        assert torch.all(orig[1:] > orig[:-1])  # order preserved
        assert torch.equal(res.position_ids[i, :new_len], orig)  # survivors keep their position ids
        assert res.inputs_embeds[i, :new_len, 1].eq(i).all()  # nothing crossed between samples
        kept_images = image[i, orig]
        assert int(kept_images.sum()) == k
        assert int((~kept_images).sum()) == ln - n  # every text token survives
        assert torch.equal(res.labels[i, :new_len], labels[i, orig])  # labels travel with tokens
        assert res.labels[i, new_len:].eq(-100).all()
        assert res.inputs_embeds[i, new_len:].eq(0).all()
        tail = res.position_ids[i, new_len:]
        if len(tail):  # padding positions continue after the last real one (no gaps read as packing)
            assert tail[0] > res.position_ids[i, new_len - 1]


def test_drops_are_uniform_over_image_tokens():
    embeds, mask, labels, pos, image, _ = _batch([20])
    g = torch.Generator().manual_seed(1)
    hits = torch.zeros(20)
    for _ in range(400):
        res = visual_robustness_drop(embeds, mask, labels, pos, image, ratio=0.75, prob=1.0, generator=g)
        orig = res.inputs_embeds[0, res.attention_mask[0].bool(), 0].long() - 1
        kept_img = orig[image[0, orig]] - 3
        hits[kept_img] += 1
    freq = hits / 400  # each image token survives with probability 5 / 20
    assert freq.min() > 0.15 and freq.max() < 0.35, freq


def test_prob_zero_is_identity_and_prob_is_per_sample():
    embeds, mask, labels, pos, image, _ = _batch([16, 16, 16])
    res = visual_robustness_drop(embeds, mask, labels, pos, image, ratio=0.75, prob=0.0)
    assert res.inputs_embeds is embeds and res.attention_mask is mask and res.labels is labels
    assert res.position_ids is pos and res.kept_per_sample.tolist() == [16, 16, 16]

    g = torch.Generator().manual_seed(3)
    applied = []
    for _ in range(300):
        res = visual_robustness_drop(embeds, mask, labels, pos, image, ratio=0.75, prob=0.5, generator=g)
        assert set(res.kept_per_sample.tolist()) <= {4, 16}
        applied += (res.kept_per_sample == 4).tolist()
    assert 0.4 < sum(applied) / len(applied) < 0.6


def test_reference_mode_fires_with_probability_one_minus_ratio():
    embeds, mask, labels, pos, image, _ = _batch([16, 12])
    g = torch.Generator().manual_seed(4)
    fired = 0
    for _ in range(400):
        res = visual_robustness_drop(
            embeds, mask, labels, pos, image, ratio=0.75, prob=1.0, generator=g, reference_mode=True
        )
        kept = res.kept_per_sample.tolist()
        assert kept in ([16, 12], [4, 3])  # one coin for the whole batch; int(n * r) removed
        fired += kept == [4, 3]
    assert 0.18 < fired / 400 < 0.32  # 1 - 0.75


def test_kept_count_is_float_robust_and_inputs_checked():
    assert kept_count(10, 0.3) == 7 and kept_count(256, 0.75) == 64 and kept_count(3, 0.75) == 1
    assert kept_count(0, 0.75) == 0
    embeds, mask, labels, pos, image, _ = _batch([4])
    with pytest.raises(ValueError, match="ratio must be in \\[0, 1\\), got 1.0"):
        visual_robustness_drop(embeds, mask, labels, pos, image, ratio=1.0, prob=1.0)
    with pytest.raises(ValueError, match="prob must be in \\[0, 1\\], got 1.5"):
        visual_robustness_drop(embeds, mask, labels, pos, image, ratio=0.5, prob=1.5)
    with pytest.raises(ValueError, match="labels must have shape"):
        visual_robustness_drop(embeds, mask, labels[:, :-1], pos, image, ratio=0.5, prob=1.0)
