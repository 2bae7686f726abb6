"""Images after the question in the embedded corpus (issue 16, ``--question-first``)."""

from __future__ import annotations

import pytest

from vitp_geo.instruct.default_corpus import images_after_question
from vitp_geo.instruct.records import InstructionRecord
from vitp_geo.pretrain.config import PretrainConfig
from vitp_geo.vlm.template import format_conversation


def _rec(i: int, value: str, n_images: int = 1) -> InstructionRecord:
    return InstructionRecord(
        id=f"r{i}",
        images=[f"images/{i}_{k}.png" for k in range(n_images)],
        conversations=[{"from": "human", "value": value}, {"from": "gpt", "value": "Yes."}],
        task="presence",
    )


def test_images_move_behind_the_question_and_the_template_puts_their_tokens_there() -> None:
    single = _rec(0, "<image>\nIs there a road?")
    pair = _rec(1, "Image-1: <image>\nImage-2: <image>\nWhat changed?\nAnswer briefly.", n_images=2)
    out = images_after_question([single, pair], 1.0)
    assert out[0].conversations[0]["value"] == "Is there a road?\n<image>"
    assert (
        out[1].conversations[0]["value"]
        == "What changed?\nAnswer briefly.\nImage-1: <image>\nImage-2: <image>"
    )
    assert out[0].conversations[1] == single.conversations[1] and out[0].images == single.images
    assert single.conversations[0]["value"] == "<image>\nIs there a road?"  # inputs untouched
    # The template now places the image block after the question text.
    user = dict(format_conversation(out[0].conversations, [3]))["user"]
    assert user.index("Is there a road?") < user.index("<img>")


def test_share_is_seeded_and_records_without_a_leading_image_stay() -> None:
    records = [_rec(i, f"<image>\nQuestion {i}?") for i in range(400)]
    inline = _rec(999, "Look at <image> and answer.")
    out = images_after_question([*records, inline], 0.25, seed=3)
    moved = sum(r.conversations[0]["value"].endswith("<image>") for r in out[:-1])
    assert 70 <= moved <= 130  # Binomial(400, 0.25): mean 100, sd 8.7
    assert out[-1] is inline
    assert images_after_question([*records, inline], 0.25, seed=3) == out
    assert images_after_question([*records, inline], 0.25, seed=4) != out
    assert images_after_question(records, 0.0) == records


def test_bad_share_and_other_corpora_are_refused() -> None:
    with pytest.raises(ValueError, match=r"question_first must be in \[0, 1\], got 1.5"):
        images_after_question([], 1.5)
    with pytest.raises(ValueError, match=r"question-first must be in \[0, 1\], got -0.1"):
        PretrainConfig(question_first=-0.1).validate()
    with pytest.raises(ValueError, match="embedded rs corpus only.*--domain med"):
        PretrainConfig(domain="med", question_first=0.5).validate()
    with pytest.raises(ValueError, match="--data r.json"):
        PretrainConfig(data="r.json", question_first=0.5).validate()
