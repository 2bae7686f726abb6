"""The embedded remote-sensing corpus behind ``vitp-geo pretrain --domain rs`` with no ``--data``.

It is made from the one synthetic world (``vitp_geo.synthetic``) by the same builders users run on
their own labels: each scene is written as GeoTIFF + mask GeoTIFF + GeoPackage, then the vector
builder (grounding, referring, counting, presence, oriented boxes, descriptions), the mask builder
(presence, dominant class, area shares, regions), the class-folder builder (scene class) and the
change-pair builder run over those files. Deterministic for a given ``seed``.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from vitp_geo.instruct.recipe import RecipeEntry, load_recipe, save_recipe
from vitp_geo.instruct.records import InstructionRecord, read_jsonl, write_jsonl

# Tasks answered by reading the whole image in one look (which classes are here, which scene is
# this). They open the default run (PretrainConfig.align_tasks) and weigh more in its recipe.
ALIGN_TASKS: tuple[str, ...] = ("classes", "classification")
# Scenes of the embedded world (``build_default_corpus``; ``vitp-geo pretrain --world-scenes``).
DEFAULT_N_SCENES = 48


def build_default_corpus(
    out_dir: Path,
    *,
    seed: int = 0,
    n_scenes: int = DEFAULT_N_SCENES,
    scene_size: int = 224,
    tile_size: int = 112,
    align_repeat: float = 4.0,
    balance_presence: bool = False,
    question_first: float = 0.0,
) -> Path:
    """Generate scenes, write them as GeoTIFF/GeoPackage and build the corpus into ``out_dir``.

    The recipe has two entries over the same ``images/``: ``rs_default_align`` (the records of
    :data:`ALIGN_TASKS`, ``repeat_time = align_repeat``) and ``rs_default`` (every other task,
    ``repeat_time = 1``). Measured on this world (docs/pretraining-evidence.md): with the
    one-look tasks at their natural share the tiny VLM learns text priors first and never starts
    reading the image within the default budget.

    Args:
        out_dir: the corpus folder (replaced if it exists).
        seed: seeds the scenes, change pairs and template choices.
        n_scenes: generated scenes (scene classes cycle so each appears); change pairs: n_scenes // 4, ≥ 1.
            48 scenes give 192 tiles: with 12 the held-out tiles are too few to tell reading from
            memorising.
        scene_size: scene side in pixels.
        tile_size: tile side in pixels for the builders.
        align_repeat: ``repeat_time`` of the one-look tasks' entry.
        balance_presence: keep, per class, as many presence questions answered "yes" as "no"
            (seeded; see :func:`balance_presence_records`), so the class asked about does not
            predict the answer. Off by default: at the default's budget it did not make the VLM
            read presence (docs/pretraining-evidence.md §2).
        question_first: share of records whose images follow the question instead of opening
            it (seeded per record; see :func:`images_after_question`).

    Returns:
        The path of ``out_dir/recipe.json``.
    """
    # Geospatial imports here, so that the medical default corpus can reuse _split_alignment.
    from vitp_geo.instruct.builders import (
        ChangeSource,
        ClassFolderSource,
        MaskSource,
        VectorSource,
        build_corpus,
    )
    from vitp_geo.io.raster import write_geotiff
    from vitp_geo.synthetic.scene import (
        CLASS_NAMES,
        DEFAULT_ORIGIN,
        SCENE_CLASSES,
        generate_change_pair,
        generate_scene,
        write_change_pair,
        write_scene,
    )

    if n_scenes < len(SCENE_CLASSES):
        raise ValueError(f"n_scenes must be >= {len(SCENE_CLASSES)} (one per scene class), got {n_scenes}")
    out_dir = Path(out_dir)
    classes = dict(enumerate(CLASS_NAMES))
    with tempfile.TemporaryDirectory(prefix="vitp_default_corpus_") as tmp:
        work = Path(tmp)
        sources: list = []
        for i in range(n_scenes):
            origin = (DEFAULT_ORIGIN[0] + i * 10_000.0, DEFAULT_ORIGIN[1])  # distinct places, same CRS
            scene = generate_scene(
                seed * 1000 + i, scene_size, origin=origin, scene_class=i % len(SCENE_CLASSES)
            )
            paths = write_scene(scene, work / "scenes", stem=f"scene_{i:03d}")
            sources.append(
                VectorSource(
                    paths.image, paths.objects, class_field="class_name", tile_size=tile_size, overlap=0.0
                )
            )
            sources.append(MaskSource(paths.image, paths.mask, classes, tile_size=tile_size, overlap=0.0))
            folder = work / "scene_classes" / SCENE_CLASSES[scene.scene_class]
            write_geotiff(folder / f"scene_{i:03d}.tif", scene.image, scene.transform, scene.crs)
        sources.append(ClassFolderSource(work / "scene_classes"))
        for j in range(max(1, n_scenes // 4)):
            pair = generate_change_pair(
                seed * 1000 + 500 + j,
                scene_size,
                origin=(DEFAULT_ORIGIN[0] - (j + 1) * 10_000.0, DEFAULT_ORIGIN[1]),
            )
            before, after, change = write_change_pair(pair, work / "pairs", stem=f"pair_{j:03d}")
            sources.append(ChangeSource(before, after, change, tile_size=tile_size))
        result = build_corpus(
            out_dir, sources, seed=seed, name="rs_default", overwrite=True, origin_base=work
        )  # origins name the generated scenes as scenes/scene_000.tif, …, not the temporary folder
    if balance_presence or question_first > 0:
        entry = load_recipe(result.recipe)[0]
        records = read_jsonl(entry.annotation).records
        if balance_presence:
            records = balance_presence_records(records, list(CLASS_NAMES), seed=seed)
        if question_first > 0:
            records = images_after_question(records, question_first, seed=seed)
        write_jsonl(entry.annotation, records)
    return _split_alignment(result.recipe, align_repeat)


def balance_presence_records(
    records: list[InstructionRecord], classes: list[str], seed: int = 0
) -> list[InstructionRecord]:
    """Drop presence records so that each class is asked as often with "yes" as with "no".

    The builders ask one present and one absent class per tile, so a class that is nearly always
    present (buildings in a residential world) is nearly always answered "yes": the question
    alone then scores well above chance and a VLM has little reason to look (measured on the
    embedded world: the class prior alone answers 64 % of presence questions). As VQA v2 did for
    language priors, keep per class a seeded sample of its majority answer as large as its
    minority answer. Records of other tasks are kept in order; the class of a question is read by
    matching it against every presence template rendered for every class.
    """
    from vitp_geo.instruct import templates as T

    by_question = {q.format(**T.class_fields(c)): c for c in classes for q in T.QUESTIONS["presence"]}
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, r in enumerate(records):
        if r.task != "presence":
            continue
        question = r.conversations[0]["value"].split("\n", 1)[-1]
        cls = by_question.get(question)
        if cls is None:
            raise ValueError(
                f"presence record {r.id!r}: no class of {classes} matches its question {question!r}"
            )
        answer = r.conversations[1]["value"].lower().startswith("yes")
        groups.setdefault((cls, answer), []).append(i)
    rng = np.random.default_rng(seed)
    drop: set[int] = set()
    for cls in classes:
        yes, no = groups.get((cls, True), []), groups.get((cls, False), [])
        keep = min(len(yes), len(no))
        for side in (yes, no):
            if len(side) > keep:
                drop.update(side[int(j)] for j in rng.permutation(len(side))[keep:])
    return [r for i, r in enumerate(records) if i not in drop]


def images_after_question(
    records: list[InstructionRecord], share: float, seed: int = 0
) -> list[InstructionRecord]:
    """Put the images of a seeded ``share`` of records after their question instead of before it.

    The builders open each question with its images (``<image>\\nIs there a road?``), InternVL's
    usual layout. In a causal LLM the image tokens then cannot see what is asked, so a question
    about one class (presence, counting, grounding) needs two hops at the answer: fetch the class
    word, then look for it among image tokens that were computed without it. With the question
    first (``Is there a road?\\n<image>``, a layout the InternVL template accepts: a placeholder
    may stand anywhere in a human turn) the image tokens attend to the question and one hop
    suffices. The ViT sees the same pixels either way.

    Args:
        records: instruction records; only the first human turn is changed, and only when it
            opens with its placeholders (single-image ``<image>\\n`` or ``Image-k: <image>\\n`` lines).
        share: in [0, 1]; each record is moved with this probability (seeded by ``seed``).
        seed: seeds the choice.

    Raises:
        ValueError: ``share`` outside [0, 1].
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"question_first must be in [0, 1], got {share}")
    from vitp_geo.instruct.records import IMAGE_PLACEHOLDER

    rng = np.random.default_rng(seed)
    draws = rng.random(len(records))
    out: list[InstructionRecord] = []
    for r, u in zip(records, draws, strict=True):
        first = r.conversations[0]
        value = str(first["value"])
        lines = value.split("\n")
        n_img = 0
        while n_img < len(lines) and lines[n_img].endswith(IMAGE_PLACEHOLDER):
            n_img += 1
        if u >= share or n_img == 0 or n_img == len(lines) or value.count(IMAGE_PLACEHOLDER) != n_img:
            out.append(r)
            continue
        moved = "\n".join(lines[n_img:] + lines[:n_img])
        out.append(replace(r, conversations=[{**first, "value": moved}, *r.conversations[1:]]))
    return out


def _split_alignment(recipe: Path, align_repeat: float, name: str = "rs_default") -> Path:
    """Move the :data:`ALIGN_TASKS` records into their own, up-weighted recipe entry ``<name>_align``."""
    entry = load_recipe(recipe)[0]
    records = read_jsonl(entry.annotation).records
    align = [r for r in records if r.task in ALIGN_TASKS]
    rest = [r for r in records if r.task not in ALIGN_TASKS]
    align_file = entry.annotation.with_name("alignment.jsonl")
    write_jsonl(align_file, align)
    write_jsonl(entry.annotation, rest)
    return save_recipe(
        recipe,
        [
            RecipeEntry(f"{name}_align", entry.root, align_file, repeat_time=align_repeat),
            RecipeEntry(name, entry.root, entry.annotation, repeat_time=1.0),
        ],
    )
