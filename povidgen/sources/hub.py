"""Inputs read through ``datasets.load_dataset``: a Hugging Face Hub dataset id, or a local
folder of data files (parquet, JSON Lines, CSV, an image folder...) read the way
``load_dataset(DIR)`` reads it.

:func:`open_input` is what ``povidgen build --dataset`` and
:meth:`povidgen.PairBuilder.from_dataset` call with a string: an existing file or a
``save_to_disk`` folder goes to :func:`povidgen.sources.files.load_examples_file` as before;
any other folder, and a name that looks like a Hub id (``owner/name`` or ``name``), goes through
``datasets.load_dataset(id, name=config, split=split, streaming=streaming, revision=revision)``.

The split defaults to ``"train"`` when the dataset has one, else to its only split; with several
and no ``"train"`` the error lists them. The input's description (``source``, recorded in the
build's configuration so that a resume against another input is refused) names the id, the
resolved config and split, the revision asked for and the dataset's fingerprint: the hash
``datasets`` derives from the data files (their commit on the Hub, their modification times on
disk), the same for a streamed and a downloaded read of the same data, so a build started one
way may be resumed the other, and a resume against changed data is noticed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from povidgen.errors import DatasetFormatError

__all__ = ["LoadedInput", "is_saved_dataset", "looks_like_hub_id", "open_input"]

# a Hub repo id: "name" or "owner/name" (letters, digits, '-', '_', '.'; no '--' or '..')
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
# names that are surely meant as files, never as Hub ids
_FILE_SUFFIXES = frozenset({".json", ".jsonl", ".parquet", ".arrow", ".csv", ".tsv", ".txt"})


@dataclass(frozen=True)
class LoadedInput:
    """A dataset opened from a path or a Hub id, with what a build records about it.

    Attributes:
        dataset: the rows (an ``IterableDataset`` when streamed).
        source: the input's description for the build's configuration.
        image_folder: where relative image paths point by default (the file's or folder's
            folder; ``None`` for a Hub dataset).
        hub: whether the rows came through ``datasets.load_dataset``.
    """

    dataset: datasets.Dataset | datasets.IterableDataset
    source: str
    image_folder: Path | None
    hub: bool


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` has the shape of a Hub dataset id (``owner/name`` or ``name``) and
    not of a file name (``data.jsonl``) or an explicit path (``./x``, ``/x``, ``~/x``)."""
    if not _HUB_ID.fullmatch(text) or "--" in text or ".." in text:
        return False
    return Path(text).suffix.lower() not in _FILE_SUFFIXES


def is_saved_dataset(path: Path) -> bool:
    """Whether the folder ``path`` was written by ``Dataset.save_to_disk`` or
    ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def open_input(
    dataset: str | os.PathLike[str],
    *,
    config: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    revision: str | None = None,
) -> LoadedInput:
    """Open ``dataset``: a local file, a ``save_to_disk`` folder, a folder of data files, or a
    Hub id (see the module docstring).

    ``config`` and ``revision`` apply to a Hub id or a folder of data files only;
    ``streaming`` makes the rows an ``IterableDataset`` (a local file is converted with
    ``to_iterable_dataset``). Raises :class:`povidgen.DatasetFormatError` on one line, naming
    what was tried, when the input cannot be opened or the split is missing.
    """
    text = os.fspath(dataset)
    path = Path(text).expanduser()
    if path.is_file() or (path.is_dir() and is_saved_dataset(path)):
        unused = [name for name, value in (("config", config), ("revision", revision)) if value]
        if unused:
            raise DatasetFormatError(
                f"{' and '.join(unused)} apply to a Hub id or a folder of data files, not to {path}"
            )
        from povidgen.sources.files import load_examples_file

        rows = load_examples_file(path, split=split)
        source = str(path.resolve()) + ("" if split is None else f" [{split}]")
        return LoadedInput(
            rows.to_iterable_dataset() if streaming else rows,
            source,
            path if path.is_dir() else path.parent,
            hub=False,
        )
    if path.is_dir():
        where = str(path.resolve())
        loaded = _load(where, where, config, split, streaming, revision)
        return LoadedInput(loaded[0], loaded[1], path, hub=True)
    if not path.exists() and looks_like_hub_id(text):
        try:
            rows, source = _load(text, text, config, split, streaming, revision)
        except DatasetFormatError as error:
            raise DatasetFormatError(f"{error} (and there is no local path {text})") from error
        return LoadedInput(rows, source, None, hub=True)
    from povidgen.sources.files import load_examples_file

    load_examples_file(path, split=split)  # raises: no dataset there, or not a regular file
    raise DatasetFormatError(f"cannot read {path}")  # pragma: no cover - the line above raises


def _load(
    name: str,
    shown: str,
    config: str | None,
    split: str | None,
    streaming: bool,
    revision: str | None,
) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
    """``load_dataset(name, ...)``, with the split chosen, and the input's description."""
    tried = f"load_dataset({shown!r}" + "".join(
        f", {key}={value!r}"
        for key, value in (("name", config), ("revision", revision))
        if value is not None
    )
    try:
        builder = datasets.load_dataset_builder(name, name=config, revision=revision)
    except Exception as error:
        raise DatasetFormatError(_explain(f"{tried})", error)) from error
    splits = _split_names(builder)
    if split is None:
        split = _default_split(splits, shown)
    elif splits and _base_splits(split) - set(splits):
        raise DatasetFormatError(
            f"{shown} has no split {split!r}; its splits are: {', '.join(splits)}"
        )
    tried += f", split={split!r}" + (", streaming=True)" if streaming else ")")
    try:
        rows = datasets.load_dataset(
            name, name=config, split=split, streaming=streaming, revision=revision
        )
    except Exception as error:
        raise DatasetFormatError(_explain(tried, error)) from error
    if not isinstance(rows, datasets.Dataset | datasets.IterableDataset):  # pragma: no cover
        raise DatasetFormatError(f"{tried} gave a {type(rows).__name__}, not one split")
    fingerprint = (
        rows._fingerprint
        if isinstance(rows, datasets.Dataset)
        else _streamed_fingerprint(builder, split)
    )
    details = [f"config {builder.config.name}", f"split {split}"]
    if revision is not None:
        details.append(f"revision {revision}")
    if fingerprint:
        details.append(f"fingerprint {fingerprint}")
    return rows, f"load_dataset {shown} ({', '.join(details)})"


def _split_names(builder: datasets.DatasetBuilder) -> list[str]:
    """The splits ``builder`` knows of, from its info or its data files (empty if neither)."""
    if builder.info.splits:
        return [str(name) for name in builder.info.splits]
    data_files = getattr(builder.config, "data_files", None)
    if isinstance(data_files, dict):
        return [str(name) for name in data_files]
    return []


def _default_split(splits: list[str], shown: str) -> str:
    if not splits or "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise DatasetFormatError(
        f"{shown} has the splits {', '.join(splits)} and none is 'train'; choose one with "
        "--split (split= in the library)"
    )


def _base_splits(split: str) -> set[str]:
    """The split names in a split expression such as ``train[:10%]+test``."""
    return {part.split("[", 1)[0].strip() for part in split.split("+")}


def _streamed_fingerprint(builder: datasets.DatasetBuilder, split: str) -> str | None:
    """The fingerprint ``load_dataset(..., streaming=False)`` would give the split: a hash of
    the builder's data folder name (config, data files and their revision) and the split."""
    fingerprint = getattr(builder, "_get_dataset_fingerprint", None)
    if fingerprint is None:  # pragma: no cover - another datasets version
        return None
    try:
        return str(fingerprint(split))
    except (AttributeError, TypeError, ValueError, OSError):  # pragma: no cover - best effort
        return None


def _explain(tried: str, error: BaseException) -> str:
    """One line saying what was tried and why it failed."""
    reason = " ".join(str(error).split()) or type(error).__name__
    if len(reason) > 300:
        reason = reason[:297] + "..."
    if datasets.config.HF_HUB_OFFLINE and isinstance(error, ConnectionError):
        return (
            f"{tried} failed: HF_HUB_OFFLINE is set and the dataset is not in the local cache "
            f"({reason})"
        )
    from datasets.exceptions import DatasetNotFoundError

    if isinstance(error, DatasetNotFoundError):
        return (
            f"{tried} failed: no such dataset on the Hub, or it is private or gated (log in "
            f"with `hf auth login` or set HF_TOKEN) ({reason})"
        )
    return f"{tried} failed: {reason}"
