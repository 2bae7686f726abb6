"""Question and answer wording for the instruction builders.

Every task has several phrasings so that a corpus is not one sentence repeated. A builder picks
one with its seeded ``numpy.random.Generator`` (``pick``), so the same seed gives the same corpus.
Placeholders are ``str.format`` fields: ``{cls}`` a class name, ``{plural}`` its plural,
``{region}`` a named region of the image, ``{options}`` a block of lettered options.
"""

from __future__ import annotations

import numpy as np

QUESTIONS: dict[str, tuple[str, ...]] = {
    "grounding": (
        "Locate every {cls} in the image.",
        "Find all {plural} in this image and give their bounding boxes.",
        "Where are the {plural} in the image?",
        "Detect each {cls} and output its box.",
        "Please mark all {plural} with bounding boxes.",
    ),
    "referring": (
        "Where is the {which} {cls} in the image?",
        "Give the bounding box of the {which} {cls}.",
        "Locate the {which} {cls}.",
        "Which box contains the {which} {cls}?",
    ),
    "counting": (
        "How many {plural} are in the image?",
        "Count the {plural} visible in this image.",
        "What is the number of {plural} in the image? Answer with a number.",
        "How many {plural} can you see?",
    ),
    "presence": (
        "Is there any {cls} in the image?",
        "Does this image contain {a_cls}? Answer yes or no.",
        "Can you see {a_cls} in this image?",
        "Are there {plural} in the image?",
    ),
    "oriented": (
        "Give the oriented bounding box of each {cls} as four corner points.",
        "Outline every {cls} with a rotated box (four corners).",
        "Provide the rotated bounding boxes of the {plural} in the image.",
    ),
    "description": (
        "Describe the objects in this image.",
        "What does this image region contain?",
        "Give a short description of this aerial image.",
        "Summarize the labelled objects visible in the image.",
    ),
    "classes": (
        "Which land-cover classes are in this image?",
        "List the classes present in this image.",
        "What classes can you see in the image?",
    ),
    "dominant": (
        "Which class covers the largest part of this image?",
        "What is the dominant land cover in the image?",
        "Which land-cover class occupies most of this image?",
    ),
    "area_share": (
        "Estimate the share of the image covered by each class.",
        "What fraction of the image does each land-cover class cover?",
        "Give the area percentage of every class in the image.",
    ),
    "region": (
        "Which classes appear in the {region}?",
        "What land-cover classes touch the {region} of the image?",
        "List the classes present in the {region}.",
    ),
    "classification_mc": (
        "Which scene category best describes this image?\n{options}\nAnswer with the option's letter.",
        "Classify this scene. Choose one:\n{options}\nReply with the letter only.",
        "What kind of scene is shown?\n{options}\nAnswer with a letter.",
    ),
    "classification_open": (
        "What type of scene is this?",
        "Classify the scene in one or two words.",
        "What land-use category does this image belong to?",
        "Name the scene category of this image.",
    ),
    "change_yesno": (
        "Has anything changed between the two images?",
        "Are there any changes from the first image to the second? Answer yes or no.",
        "Did the scene change between the two dates?",
    ),
    "change_where": (
        "Where are the changed areas between the two images?",
        "Locate the regions that changed from the first image to the second.",
        "Give bounding boxes of the areas that changed.",
    ),
    "change_area": (
        "How much area changed between the two images?",
        "What is the total changed area, and what share of the image is it?",
        "Estimate the size of the changed area.",
    ),
    "change_caption": (
        "Describe the changes between the two images.",
        "Write a caption describing what changed from the first image to the second.",
        "Summarize the differences between the two dates.",
    ),
}

YES = ("Yes.", "Yes", "Yes, there is.")
NO = ("No.", "No", "No, there is not.")

# Words whose plural is not "+s".
_IRREGULAR = {"water": "water bodies", "person": "people", "bus": "buses", "glass": "glasses"}
# Mass nouns that need a counting word in the singular ("a water body", not "a water").
_SINGULAR = {"water": "water body", "vegetation": "vegetation patch", "grass": "grass patch"}


def singular(name: str) -> str:
    """The singular noun phrase of a class name ("water" → "water body")."""
    return _SINGULAR.get(name, name)


def with_article(phrase: str) -> str:
    """``a building`` / ``an airport``."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def class_fields(name: str) -> dict[str, str]:
    """Template fields for a class: ``cls``, ``a_cls``, ``plural``."""
    noun = singular(name)
    return {"cls": noun, "a_cls": with_article(noun), "plural": plural(name)}


def plural(name: str) -> str:
    """English plural of a class name (a small rule set; irregular names in ``_IRREGULAR``)."""
    if name in _IRREGULAR:
        return _IRREGULAR[name]
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es" if not name.endswith("s") else name
    if name.endswith("y") and len(name) > 1 and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def pick(rng: np.random.Generator, task: str, **fields: object) -> str:
    """A seeded choice among ``QUESTIONS[task]``, formatted with ``fields``."""
    if task not in QUESTIONS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(QUESTIONS)}")
    options = QUESTIONS[task]
    return options[int(rng.integers(len(options)))].format(**fields)


def yes_no(rng: np.random.Generator, answer: bool) -> str:
    """A seeded phrasing of yes or no."""
    options = YES if answer else NO
    return options[int(rng.integers(len(options)))]


def join_words(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]
