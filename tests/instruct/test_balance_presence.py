"""Class-balanced presence questions in the embedded corpus (issue 16)."""

from __future__ import annotations

import pytest

from vitp_geo.instruct import templates as T
from vitp_geo.instruct.default_corpus import balance_presence_records
from vitp_geo.instruct.records import InstructionRecord


def _presence(i: int, cls: str, yes: bool, template: int) -> InstructionRecord:
    q = T.QUESTIONS["presence"][template].format(**T.class_fields(cls))
    return InstructionRecord(
        id=f"r{i}",
        images=[f"images/{i}.png"],
        conversations=[
            {"from": "human", "value": f"<image>\n{q}"},
            {"from": "gpt", "value": "Yes." if yes else "No."},
        ],
        task="presence",
    )


def test_each_class_keeps_as_many_yes_as_no_and_other_tasks_stay() -> None:
    records = []
    for i in range(30):  # building: 24 yes / 6 no; water: 5 yes / 15 no
        records.append(_presence(i, "building", i % 5 != 0, i % 4))
    for i in range(30, 50):
        records.append(_presence(i, "water", i % 4 == 0, i % 4))
    other = InstructionRecord(
        id="c",
        images=["images/c.png"],
        conversations=[{"from": "human", "value": "<image>\nCount."}, {"from": "gpt", "value": "3"}],
        task="counting",
    )
    records.insert(7, other)
    out = balance_presence_records(records, ["building", "road", "water"], seed=0)
    assert other in out
    counts: dict[tuple[str, bool], int] = {}
    for r in out:
        if r.task == "presence":
            cls = "building" if "building" in r.conversations[0]["value"] else "water"
            key = (cls, r.conversations[1]["value"] == "Yes.")
            counts[key] = counts.get(key, 0) + 1
    assert counts == {("building", True): 6, ("building", False): 6, ("water", True): 5, ("water", False): 5}
    assert balance_presence_records(records, ["building", "road", "water"], seed=0) == out  # seeded
    assert balance_presence_records(records, ["building", "road", "water"], seed=1) != out


def test_a_question_of_no_known_class_is_named() -> None:
    rec = _presence(0, "building", True, 0)
    with pytest.raises(ValueError, match=r"presence record 'r0': no class of \['water'\] matches"):
        balance_presence_records([rec], ["water"])
