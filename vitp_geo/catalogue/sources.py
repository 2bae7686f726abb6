"""Where the scenes of a catalogue run come from: STAC, folders, globs, path lists, before/after CSVs.

``read_source(source)`` turns what the user named into a list of ``SceneTask`` (one scene, or one
before/after pair for change models), each with a stable id that names its output folder:

* a STAC catalogue, collection or item JSON (read with ``pystac``): every item reachable from it;
  the asset read is ``asset`` (default: the first GeoTIFF / COG asset), the "after" asset of a
  change pair ``after_asset``; the id is the item's id;
* a folder (every ``.tif`` / ``.tiff`` below it) or a glob (``'scenes/*.tif'``): the id is the
  path below the folder without its suffix;
* a text file with one path per line (relative paths are relative to the file; blank lines and
  ``#`` comments are skipped);
* a ``.csv`` with ``before`` and ``after`` columns (and an optional ``id`` column): change pairs;
* a single GeoTIFF.
"""

from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass
from pathlib import Path

import pystac

GEOTIFF_SUFFIXES = (".tif", ".tiff")
GEOTIFF_MEDIA = ("image/tiff", "image/geotiff", "image/tiff; application=geotiff")


@dataclass(frozen=True)
class SceneTask:
    """One unit of work: a scene (or a before/after pair) and the id its outputs are filed under.

    Attributes:
        scene_id: unique within the run; names the output folder ``scenes/<scene_id>``.
        scene: the GeoTIFF (the "before" image of a change pair).
        after: the "after" image of a change pair.
        item_href: the source STAC item's JSON (absolute), linked from the output item.
        datetime: the source item's datetime (ISO 8601), carried to the output item.
    """

    scene_id: str
    scene: Path
    after: Path | None = None
    item_href: str | None = None
    datetime: str | None = None


def _safe_id(text: str) -> str:
    """A file-name-safe id: path separators and odd characters become ``_``."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return out or "scene"


def _unique(tasks: list[SceneTask], source: str) -> list[SceneTask]:
    seen: dict[str, SceneTask] = {}
    for t in tasks:
        if t.scene_id in seen:
            raise ValueError(
                f"{source}: two scenes get the id {t.scene_id!r} ({seen[t.scene_id].scene} and {t.scene}); "
                "rename one, or list them from a folder (ids then include the sub-folder)"
            )
        seen[t.scene_id] = t
    if not tasks:
        raise ValueError(f"{source}: no scenes found")
    return tasks


def read_source(
    source: str | Path, *, asset: str | None = None, after_asset: str | None = None
) -> list[SceneTask]:
    """The scenes ``source`` names (module doc), in a stable order.

    Raises:
        FileNotFoundError: ``source`` (or a listed scene file) does not exist.
        ValueError: an unreadable source, a missing asset key, duplicate ids or no scenes at all.
    """
    text = str(source)
    path = Path(text)
    if (asset is not None or after_asset is not None) and path.suffix.lower() != ".json":
        raise ValueError(f"--asset / --after-asset choose assets of STAC items; {text} is not a STAC JSON")
    if any(c in text for c in "*?[") and not path.exists():
        files = sorted(
            Path(p) for p in glob.glob(text, recursive=True) if p.lower().endswith(GEOTIFF_SUFFIXES)
        )
        return _unique([SceneTask(_safe_id(p.stem), p) for p in files], text)
    if not path.exists():
        raise FileNotFoundError(f"catalogue source not found: {text}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in GEOTIFF_SUFFIXES and p.is_file())
        return _unique(
            [SceneTask(_safe_id(str(p.relative_to(path).with_suffix(""))), p) for p in files], text
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _unique(_stac_tasks(path, asset, after_asset), text)
    if suffix == ".parquet":
        raise ValueError(
            f"{text}: STAC-GeoParquet is not read yet; export the items to a STAC JSON catalogue"
        )
    if suffix == ".csv":
        return _unique(_csv_tasks(path), text)
    if suffix in GEOTIFF_SUFFIXES:
        return [SceneTask(_safe_id(path.stem), path)]
    return _unique(_list_tasks(path), text)


def _list_tasks(path: Path) -> list[SceneTask]:
    tasks = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not p.is_file():
            raise FileNotFoundError(f"{path}, line {n}: scene not found: {entry}")
        tasks.append(SceneTask(_safe_id(p.stem), p))
    return tasks


def _csv_tasks(path: Path) -> list[SceneTask]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in reader.fieldnames or []]
        if "before" not in fields or "after" not in fields:
            raise ValueError(
                f"{path}: a pairs CSV needs 'before' and 'after' columns, got {reader.fieldnames}"
            )
        tasks = []
        for n, row in enumerate(reader, 2):  # line 1 is the header
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
            pair = []
            for col in ("before", "after"):
                if not row.get(col):
                    raise ValueError(f"{path}, line {n}: empty {col!r}")
                p = Path(row[col]) if Path(row[col]).is_absolute() else path.parent / row[col]
                if not p.is_file():
                    raise FileNotFoundError(f"{path}, line {n}: {col} scene not found: {row[col]}")
                pair.append(p)
            tasks.append(SceneTask(_safe_id(row.get("id") or pair[0].stem), pair[0], pair[1]))
    return tasks


def _stac_tasks(path: Path, asset: str | None, after_asset: str | None) -> list[SceneTask]:
    try:
        obj = pystac.read_file(str(path))
    except Exception as err:  # pystac raises several types for a file that is not STAC
        raise ValueError(f"{path}: not a readable STAC catalogue, collection or item ({err})") from err
    if isinstance(obj, pystac.Item):
        items = [obj]
    elif isinstance(obj, pystac.Catalog):  # a Collection is a Catalog
        items = sorted(obj.get_items(recursive=True), key=lambda i: i.id)
    else:
        raise ValueError(
            f"{path}: a STAC {type(obj).__name__} lists no items; give a catalogue or collection"
        )
    tasks = []
    for item in items:
        key = asset if asset is not None else _first_geotiff(item)
        before = _asset_path(item, key, "--asset")
        after = _asset_path(item, after_asset, "--after-asset") if after_asset is not None else None
        when = item.datetime.isoformat() if item.datetime is not None else None
        tasks.append(SceneTask(_safe_id(item.id), before, after, item.get_self_href(), when))
    return tasks


def _first_geotiff(item: pystac.Item) -> str:
    assets = item.assets
    for key, a in assets.items():
        media = (a.media_type or "").lower()
        if media.startswith(GEOTIFF_MEDIA) or a.href.lower().endswith(GEOTIFF_SUFFIXES):
            return str(key)
    raise ValueError(
        f"STAC item {item.id!r} has no GeoTIFF asset (assets: {', '.join(assets) or 'none'}); "
        "choose one with --asset KEY"
    )


def _asset_path(item: pystac.Item, key: str, flag: str) -> Path:
    assets = item.assets
    if key not in assets:
        raise ValueError(
            f"STAC item {item.id!r} has no asset {key!r} ({flag}); its assets: {', '.join(assets) or 'none'}"
        )
    href = assets[key].get_absolute_href()
    if href is None or "://" in href and not href.startswith("file://"):
        raise ValueError(
            f"STAC item {item.id!r}, asset {key!r}: {href} is not a local file (nothing is downloaded)"
        )
    return Path(href.removeprefix("file://"))
