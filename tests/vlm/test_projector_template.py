"""Pixel shuffle (hand-worked example), projector keys, tokenizer and the internvl2_5 template."""

from __future__ import annotations

import pytest
import torch

from vitp_geo.vlm.projector import build_projector, pixel_shuffle
from vitp_geo.vlm.template import INTERNVL2_5_SYSTEM_MESSAGE, tokenize_conversation
from vitp_geo.vlm.tokenizer import SPECIAL_TOKENS, build_offline_tokenizer


def test_pixel_shuffle_hand_worked_example():
    # One image, a 2×2 grid (W, H) with 1 channel: x[0, w, h, 0] = 10*w + h.
    x = torch.tensor([[[[0.0], [1.0]], [[10.0], [11.0]]]])  # (1, 2, 2, 1)
    # v1: view(1, 2, 1, 2) → [[0, 1]], [[10, 11]]; permute → (1, 1, 2, 2); view(1, 1, 1, 4).
    assert pixel_shuffle(x, 0.5, "v1").flatten().tolist() == [0.0, 1.0, 10.0, 11.0]
    assert pixel_shuffle(x, 0.5, "v2").flatten().tolist() == [0.0, 1.0, 10.0, 11.0]
    # A 4×2 grid (W=4, H=2) separates the versions: v1 leaves the output grid transposed.
    y = torch.arange(8.0).reshape(1, 4, 2, 1)  # y[0, w, h] = 2w + h
    v2 = pixel_shuffle(y, 0.5, "v2")
    v1 = pixel_shuffle(y, 0.5, "v1")
    assert v2.shape == (1, 2, 1, 4) and v1.shape == (1, 1, 2, 4)
    # Output token (w', h') gathers rows w = 2w', 2w'+1 at h = 2h', 2h'+1, ordered (w, h-pair).
    assert v2[0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert v2[0, 1, 0].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert torch.equal(v1.permute(0, 2, 1, 3), v2)
    with pytest.raises(ValueError, match="ps_version"):
        pixel_shuffle(x, 0.5, "v3")
    with pytest.raises(ValueError, match="does not evenly divide the 3x2 grid"):
        pixel_shuffle(torch.zeros(1, 3, 2, 4), 0.5)


def test_projector_layout_matches_internvl_keys():
    mlp = build_projector(16, 32, 0.5)
    assert list(mlp.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert mlp[0].normalized_shape == (64,) and mlp[1].in_features == 64 and mlp[3].out_features == 32
    assert isinstance(mlp[2], torch.nn.GELU)


def test_offline_tokenizer_is_deterministic_and_has_internvl_tokens():
    a = build_offline_tokenizer(["a field next to a river"])
    b = build_offline_tokenizer(["a field next to a river"])
    assert a.get_vocab() == b.get_vocab()
    for t in SPECIAL_TOKENS:
        ids = a(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and a.convert_ids_to_tokens(ids[0]) == t  # never split
    assert a.pad_token == "<|endoftext|>" and a.eos_token == "<|im_end|>"
    text = "How many buildings? 3 — ünïcode ok"
    assert a.decode(a(text)["input_ids"]) == text  # byte-level: lossless


@pytest.fixture(scope="module")
def tok():
    return build_offline_tokenizer()


def _decode(tok, ids):
    return tok.decode(ids.tolist())


def test_template_layout_and_assistant_only_labels(tok):
    conv = [
        {"from": "human", "value": "<image>\nHow many buildings?"},
        {"from": "gpt", "value": "3"},
        {"from": "human", "value": "Is there water?"},
        {"from": "gpt", "value": "Yes"},
    ]
    ids, labels = tokenize_conversation(conv, tok, [5], max_length=4096)
    text = _decode(tok, ids)
    img = "<img>" + "<IMG_CONTEXT>" * 5 + "</img>"
    assert text == (
        f"<|im_start|>system\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\n"
        f"<|im_start|>user\n{img}\nHow many buildings?<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n"
        "<|im_start|>user\nIs there water?<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n"
    )
    assert ids.shape == labels.shape and ids.dtype == torch.long
    supervised = labels != -100
    assert torch.equal(labels[supervised], ids[supervised])
    # Exactly the answers and their <|im_end|> carry loss, nothing else (no image tokens).
    spans, cur = [], []
    for i, s in enumerate(supervised.tolist()):
        if s:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert [_decode(tok, ids[s]) for s in spans] == ["3<|im_end|>", "Yes<|im_end|>"]
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert int((ids == ctx).sum()) == 5 and labels[ids == ctx].eq(-100).all()


def test_images_without_placeholder_are_prepended_and_system_override(tok):
    conv = [
        {"from": "system", "value": "SYS"},
        {"from": "human", "value": "Describe."},
        {"from": "gpt", "value": "A field."},
    ]
    ids, _ = tokenize_conversation(conv, tok, [2, 3], max_length=4096)
    text = _decode(tok, ids)
    a, b = "<img>" + "<IMG_CONTEXT>" * 2 + "</img>", "<img>" + "<IMG_CONTEXT>" * 3 + "</img>"
    assert text.startswith(
        f"<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n{a}\n{b}\nDescribe.<|im_end|>"
    )
    ids2, _ = tokenize_conversation(conv[1:], tok, [], max_length=4096, system_message="")
    assert _decode(tok, ids2).startswith("<|im_start|>user\nDescribe.")


def test_truncation_never_cuts_image_tokens(tok):
    conv = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A long answer " * 5}]
    full, _ = tokenize_conversation(conv, tok, [40], max_length=4096, system_message="")
    ids, labels = tokenize_conversation(conv, tok, [40], max_length=len(full) - 3, system_message="")
    assert len(ids) == len(full) - 3 and torch.equal(ids, full[: len(full) - 3])
    with pytest.raises(
        ValueError, match=r"max_length 20 would cut through an image's context tokens.*has \d+ tokens"
    ):
        tokenize_conversation(conv, tok, [40], max_length=20, system_message="")
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        tokenize_conversation(conv, tok, [4, 4], max_length=4096)


def test_truncation_before_a_later_image_is_refused(tok):
    # The cut falls in the text between two images: the second image would vanish silently.
    conv = [
        {"from": "human", "value": "<image>\nfirst " + "word " * 30 + "\n<image>\nQ?"},
        {"from": "gpt", "value": "A."},
    ]
    full, _ = tokenize_conversation(conv, tok, [4, 4], max_length=4096, system_message="")
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    second = [i for i, t in enumerate(full.tolist()) if t == ctx][4]  # first token of image 2
    with pytest.raises(ValueError, match="would cut through an image's context tokens"):
        tokenize_conversation(conv, tok, [4, 4], max_length=second - 3, system_message="")
