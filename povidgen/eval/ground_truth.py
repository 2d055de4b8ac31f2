"""The evaluation data of ``povidgen eval --data``: images and the objects present in each.

A folder::

    DIR/
      ground_truth.jsonl   one JSON object a line (required)
      vocabulary.json      {"word": "category", ...} (optional)
      images/...           the images, anywhere under DIR

Each line of ``ground_truth.jsonl`` names an image and the objects in it::

    {"id": "scene-0000", "image": "images/scene-0000.png", "objects": ["apple", "ball"]}

* ``image`` (required): the image file, relative to the folder (or absolute).
* ``objects`` (required): the names of the objects present, as a list of strings (may be
  empty): COCO categories or their synonyms (``"dog"``, ``"sports ball"``, ``"ball"``), or
  words of ``vocabulary.json`` when there is one.
* ``id`` (optional): the image's name in the report; default the ``image`` path.
* Any other key is ignored, so a ``povidgen build`` input file (``image``, ``prompt``,
  ``answer`` rows) with an ``objects`` key serves as it is. Lines naming the same image are
  one image (their ``objects`` must agree); images keep the order of their first line.

``vocabulary.json`` makes CHAIR score with that vocabulary instead of COCO's (the same format
as :class:`~povidgen.eval.Vocabulary`'s ``synonyms``: word or phrase -> category), and makes
its categories the objects that POPE may ask about as absent (default: every object named in
``ground_truth.jsonl``). For povidgen's demo scenes write
``dict(povidgen.eval.SCENE_VOCABULARY)``.

``--data`` may also name the ``.jsonl`` file itself (any name); ``vocabulary.json`` is then
looked for beside it.

A ``datasets`` ``save_to_disk`` folder (a ``Dataset`` or a ``DatasetDict``, such as ``povidgen
scenes`` writes) serves too, when it has an ``image`` column (``datasets.Image``) and an
``objects`` column (lists of strings). Of a ``DatasetDict`` the ``test`` split is read unless
``split`` names another (or it has a single split). Rows of the same image are one image: the
same ``scene_id`` when the column exists, else the same image bytes; ``id`` is the
``scene_id``, else the row's ``id``. A ``vocabulary.json`` inside the folder is read as above.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from povidgen.errors import InputError

__all__ = [
    "GROUND_TRUTH",
    "VOCABULARY",
    "GroundTruth",
    "GroundTruthImage",
    "load_ground_truth",
    "read_vocabulary",
]

GROUND_TRUTH = "ground_truth.jsonl"
"""The file of a data folder that lists its images and their objects."""
VOCABULARY = "vocabulary.json"
"""The optional file of a data folder that holds its object vocabulary."""


@dataclass(frozen=True)
class GroundTruthImage:
    """One image of the evaluation data: its id, its file (or encoded bytes, for a dataset
    folder) and its present objects."""

    id: str
    image: Path | bytes
    objects: tuple[str, ...]


@dataclass(frozen=True)
class GroundTruth:
    """The evaluation data: images in file order and, when given, the vocabulary."""

    source: Path
    images: tuple[GroundTruthImage, ...]
    vocabulary: dict[str, str] | None


def load_ground_truth(path: str | os.PathLike[str], *, split: str | None = None) -> GroundTruth:
    """Read a data folder (or its ``.jsonl`` file, or a ``save_to_disk`` folder) as described
    in the module.

    Every image file is checked to exist; nothing is decoded.

    Raises:
        InputError: a missing folder or file, a line that is not a JSON object, a missing or
            malformed ``image`` or ``objects``, an image that is not a file, one image given
            different objects, no image at all, a malformed ``vocabulary.json``, or a
            ``split`` that the data does not have.
    """
    given = Path(path)
    if not given.exists():
        raise InputError(f"{given}: no such folder or file")
    saved = given.is_dir() and any(
        (given / name).is_file() for name in ("dataset_info.json", "dataset_dict.json")
    )
    if saved:
        return _load_saved(given, split)
    if split is not None:
        raise InputError(f"{given}: a split is only for a save_to_disk dataset folder")
    source = given / GROUND_TRUTH if given.is_dir() else given
    if not source.is_file():
        raise InputError(
            f"{given} has no {GROUND_TRUTH} (one JSON line per image with 'image' and 'objects'; "
            "see docs/eval.md)"
        )
    root = source.parent
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{source}: cannot read it: {error}") from error

    by_path: dict[Path, GroundTruthImage] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [key for key in ("image", "objects") if key not in row]
        if missing:
            raise InputError(f"{where}: missing {' and '.join(repr(k) for k in missing)}")
        image, objects, name = row["image"], row["objects"], row.get("id")
        if not isinstance(image, str) or not image.strip():
            raise InputError(f"{where}: 'image' must be a file path (a non-empty string)")
        if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
            raise InputError(f"{where}: 'objects' must be a list of strings")
        if name is not None and not isinstance(name, str | int):
            raise InputError(f"{where}: 'id' must be a string")
        file = Path(image) if Path(image).is_absolute() else root / image
        if not file.is_file():
            raise InputError(f"{where}: image {image!r} is not a file")
        entry = GroundTruthImage(
            id=str(name) if name is not None else image,
            image=file,
            objects=tuple(dict.fromkeys(" ".join(o.split()) for o in objects if o.strip())),
        )
        earlier = by_path.get(file)
        if earlier is None:
            by_path[file] = entry
        elif set(earlier.objects) != set(entry.objects):
            raise InputError(
                f"{where}: image {image!r} was listed earlier with other objects "
                f"({sorted(earlier.objects)} vs {sorted(entry.objects)})"
            )
    if not by_path:
        raise InputError(f"{source} lists no image")
    return GroundTruth(source, tuple(by_path.values()), read_vocabulary(root / VOCABULARY))


def _load_saved(folder: Path, split: str | None) -> GroundTruth:
    """The images of a ``save_to_disk`` folder, one per ``scene_id`` (or per image bytes)."""
    import datasets
    import datasets.exceptions

    try:
        loaded: Any = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise InputError(f"{folder}: cannot read it: {' '.join(str(error).split())}") from error
    if isinstance(loaded, datasets.DatasetDict):
        names = sorted(loaded)
        if split is None:
            split = "test" if "test" in loaded or len(loaded) != 1 else names[0]
        if split not in loaded:
            raise InputError(f"{folder} has no split {split!r}; it holds: {', '.join(names)}")
        loaded = loaded[split]
    elif split is not None:
        raise InputError(f"{folder} holds a single dataset, not splits; drop the split")
    columns = list(loaded.column_names)
    missing = [c for c in ("image", "objects") if c not in columns]
    if missing:
        raise InputError(
            f"{folder}: missing the column(s) {', '.join(missing)}; it has {', '.join(columns)}"
        )
    image_feature = loaded.features["image"]
    if not isinstance(image_feature, datasets.Image):
        raise InputError(f"{folder}: the 'image' column is not a datasets.Image column")
    keep = [c for c in ("image", "objects", "scene_id", "id") if c in columns]
    rows = loaded.select_columns(keep).cast_column("image", datasets.Image(decode=False))
    by_key: dict[str, GroundTruthImage] = {}
    for number, row in enumerate(rows):
        where = f"{folder} row {number}"
        cell, objects = row["image"], row["objects"]
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data and isinstance(cell, dict) and cell.get("path"):
            file = Path(cell["path"])
            if not file.is_file():
                raise InputError(f"{where}: image {cell['path']!r} is not a file")
            data = file.read_bytes()
        if not data:
            raise InputError(f"{where}: the row has no image")
        if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
            raise InputError(f"{where}: 'objects' must be a list of strings")
        key = str(row["scene_id"]) if row.get("scene_id") else hashlib.sha1(data).hexdigest()
        name = row.get("scene_id") or row.get("id") or f"row-{number}"
        entry = GroundTruthImage(
            id=str(name),
            image=bytes(data),
            objects=tuple(dict.fromkeys(" ".join(o.split()) for o in objects if o.strip())),
        )
        earlier = by_key.get(key)
        if earlier is None:
            by_key[key] = entry
        elif set(earlier.objects) != set(entry.objects):
            raise InputError(f"{where}: image {entry.id!r} was listed earlier with other objects")
    if not by_key:
        raise InputError(f"{folder} holds no row")
    source = folder / (split or "")
    return GroundTruth(source, tuple(by_key.values()), read_vocabulary(folder / VOCABULARY))


def read_vocabulary(path: Path) -> dict[str, str] | None:
    """The ``{word: category}`` table of a ``vocabulary.json``, or ``None`` when there is no
    such file.

    Raises:
        InputError: the file is not a non-empty JSON object of strings.
    """
    if not path.exists():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read it: {error}") from error
    if (
        not isinstance(table, dict)
        or not table
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items())
    ):
        raise InputError(f"{path}: expected a non-empty JSON object of word -> category strings")
    return table
