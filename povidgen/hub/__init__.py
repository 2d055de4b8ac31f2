"""Publishing pairs to the Hugging Face Hub: :func:`publish` and ``povidgen push``.

What goes up::

    README.md                   the dataset card (metadata + povidgen's provenance section)
    data/train-00000.parquet    the build's finished shards, as they are (images embedded)
    preview.png                 a contact sheet of the first pairs, shown in the card

A file whose bytes the repository already holds is not sent again (compared by SHA-256 with
the Hub's LFS ids, or by git blob id), so pushing the same folder twice uploads nothing, and a
push that was interrupted continues with what is missing: data files go up in several commits
of at most :data:`COMMIT_FILES` files or :data:`COMMIT_BYTES` bytes, the card last.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import datasets
import pyarrow.parquet as pq

from povidgen.errors import PovidgenError
from povidgen.hub.card import PREVIEW, CardFacts, EditCounter, dropped_of, render_card
from povidgen.hub.client import HfHubClient, HubClient, git_blob_id, sha256_of
from povidgen.redact import register_secret, scrub

__all__ = ["COMMIT_BYTES", "COMMIT_FILES", "PublishError", "PublishResult", "publish"]

logger = logging.getLogger("povidgen")

COMMIT_FILES = 50
"""The most data files one commit adds."""
COMMIT_BYTES = 4 * 2**30
"""The most data bytes one commit adds (a single larger file goes alone)."""

README = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_PAIR_COLUMNS = ("images", "prompt", "chosen", "rejected")
_EXAMPLES = 3
_PREVIEW_ROWS = 6
_SHARD_BYTES = 512 * 2**20
_T = TypeVar("_T")


class PublishError(PovidgenError):
    """Publishing failed: a bad source, repo id or dry-run folder, no token, or a Hub error."""


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did.

    Attributes:
        repo_id: the dataset repository.
        revision: the branch pushed to (``None``: the default branch).
        url: the repository's URL (``None`` for a dry run).
        uploaded: the paths sent (in a dry run: written), in commit order.
        unchanged: the paths the repository already held with the same bytes.
        commits: how many commits were made.
        folder: the dry run's folder, else ``None``.
    """

    repo_id: str
    revision: str | None
    url: str | None
    uploaded: tuple[str, ...]
    unchanged: tuple[str, ...]
    commits: int
    folder: Path | None


def publish(
    source: str | os.PathLike[str] | datasets.Dataset,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    revision: str | None = None,
    dry_run: str | os.PathLike[str] | None = None,
    license: str | None = None,
    api: HubClient | None = None,
    progress: bool = False,
) -> PublishResult:
    """Push pairs and their dataset card to the Hub dataset repository ``repo_id``.

    Args:
        source: a ``povidgen build`` output folder (its finished shards go up as they are) or
            a pairs ``datasets.Dataset`` (written to parquet shards first, images embedded).
        repo_id: ``owner/name``; created if missing, ``private`` by default. An existing
            repository keeps its visibility.
        private: whether a new repository is private.
        token: a Hub token; ``None`` lets ``huggingface_hub`` find one (``HF_TOKEN``, then the
            saved login). It is scrubbed from every log line and error.
        revision: the branch to push to (created if missing); the default branch if ``None``.
        dry_run: a local folder to write exactly the files a push would upload, instead of
            pushing (no token or network needed). A ``README.md`` already there keeps its
            user text, as a published card does.
        license: the license of the source data, for the card's metadata (default: Apache-2.0
            for the bundled demo scenes, ``other`` otherwise).
        api: the Hub client (default: :class:`~povidgen.hub.client.HfHubClient`).
        progress: show the progress bars of ``datasets`` and ``huggingface_hub`` (uploads,
            parquet writing); off by default, since the library does not print.

    Returns:
        a :class:`PublishResult`.

    Raises:
        PublishError: a bad source, repo id or dry-run folder, no token, or a Hub error.
    """
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise PublishError(f"{repo_id!r} is not a Hub repository id (owner/name)")
    if revision is not None and not revision.strip():
        raise PublishError("the revision is empty")
    register_secret(token)
    with _progress_bars(progress):
        return _publish(
            source,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            dry_run=dry_run,
            license=license,
            api=api,
        )


def _publish(
    source: str | os.PathLike[str] | datasets.Dataset,
    repo_id: str,
    *,
    private: bool,
    token: str | None,
    revision: str | None,
    dry_run: str | os.PathLike[str] | None,
    license: str | None,
    api: HubClient | None,
) -> PublishResult:
    target = None if dry_run is None else Path(dry_run)
    client = None
    if target is not None:
        _check_dry_run_folder(target, source)
    else:  # a missing token is reported before any work
        client = api if api is not None else _default_client(token)
    with tempfile.TemporaryDirectory(prefix="povidgen-publish-") as temporary:
        staging = Path(temporary)
        data_files, facts_source = _stage(source, staging)
        facts = _facts(facts_source, data_files, repo_id, license, staging)
        files = [(f"data/{path.name}", path) for path in data_files]
        if facts.has_preview:
            files.append((PREVIEW, staging / PREVIEW))
        if target is not None:
            existing = _read_local(target / README)
            card = staging / README
            card.write_text(render_card(facts, existing), encoding="utf-8")
            return _write_dry_run(target, [*files, (README, card)], repo_id, revision)
        assert client is not None
        return _push(
            client, repo_id, files, facts, private=private, revision=revision, staging=staging
        )


# ---------------------------------------------------------------------------------------------
# The source


@dataclass
class _Built:
    """A build folder's summary, or ``None`` fields for a ``Dataset``."""

    summary: Mapping[str, Any] | None


def _stage(
    source: str | os.PathLike[str] | datasets.Dataset, staging: Path
) -> tuple[list[Path], _Built]:
    """The data files to publish, and the summary they come with."""
    if isinstance(source, datasets.Dataset):
        missing = [c for c in _PAIR_COLUMNS if c not in source.column_names]
        if missing:
            raise PublishError(f"the dataset is not pairs: no column {', '.join(missing)}")
        if len(source) == 0:
            raise PublishError("the dataset has no rows")
        return _write_shards(source, staging / "data"), _Built(None)
    if not isinstance(source, (str, os.PathLike)):
        raise PublishError(
            f"source must be a build folder or a datasets.Dataset, not {type(source).__name__}"
        )
    return _build_files(Path(source)), _Built(_read_summary(Path(source)))


def _build_files(folder: Path) -> list[Path]:
    """The finished shards of the build in ``folder``, checked against its manifest."""
    from povidgen.pairs.output import MARKER
    from povidgen.pairs.shards import MANIFEST, read_manifest

    if not folder.is_dir():
        raise PublishError(f"{folder}: no such folder")
    if not (folder / MARKER).is_file() or not (folder / MANIFEST).is_file():
        raise PublishError(f"{folder} is not a povidgen build folder (no {MARKER} or {MANIFEST})")
    summary = _read_summary(folder)
    if summary is None or not summary.get("complete"):
        raise PublishError(
            f"{folder} holds an unfinished build (summary.json: not complete); run the same "
            "'povidgen build' again to finish it"
        )
    segments = read_manifest(folder)
    files = []
    for segment in segments:
        path = folder / segment.shard
        if segment.sha256 and sha256_of(path) != segment.sha256:
            raise PublishError(f"{path} changed since the build wrote it (its SHA-256 differs)")
        files.append(path)
    if not sum(pq.ParquetFile(path).metadata.num_rows for path in files):
        raise PublishError(f"{folder} holds no pairs")
    return files


def _read_summary(folder: Path) -> dict[str, Any] | None:
    from povidgen.pairs.shards import SUMMARY

    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _write_shards(dataset: datasets.Dataset, folder: Path) -> list[Path]:
    """``dataset`` as parquet shards of about 512 MiB, images embedded (an image stored as a
    path is read into the shard, as ``push_to_hub`` does)."""
    from datasets.table import embed_table_storage

    folder.mkdir(parents=True)
    count = max(1, math.ceil(dataset.data.nbytes / _SHARD_BYTES))
    count = min(count, len(dataset))
    files = []
    for index in range(count):
        path = folder / f"train-{index:05d}.parquet"
        shard = dataset.shard(count, index, contiguous=True)
        embedded = shard.with_format("arrow").map(
            embed_table_storage,
            batched=True,
            cache_file_name=str(folder.parent / f".embedded-{index:05d}.arrow"),
        )
        embedded.with_format(None).to_parquet(str(path))
        files.append(path)
    return files


def _rows(files: Sequence[Path], *, images: bool) -> Iterator[dict[str, Any]]:
    """The rows of ``files``; without the clean images unless ``images``."""
    for path in files:
        handle = pq.ParquetFile(path)
        names = handle.schema_arrow.names
        columns = names if images else [n for n in names if n != "images"]
        for batch in handle.iter_batches(batch_size=64, columns=columns):
            yield from batch.to_pylist()


# ---------------------------------------------------------------------------------------------
# The card's facts


def _facts(
    built: _Built, files: Sequence[Path], repo_id: str, license: str | None, staging: Path
) -> CardFacts:
    from povidgen import __version__

    counts = EditCounter()
    examples: list[dict[str, Any]] = []
    for row in _rows(files, images=False):
        counts.add(row)
        if len(examples) < _EXAMPLES:
            examples.append(row)
    first = examples[0].get("provenance") or {} if examples else {}
    has_preview = _save_preview(files, staging / PREVIEW)
    summary = built.summary
    if summary is not None:
        configuration = summary.get("configuration") or {}
        hallucinator = configuration.get("hallucinator") or {}
        distorter = configuration.get("distorter") or None
        source = str(configuration.get("source") or "not recorded")
        return CardFacts(
            repo_id=repo_id,
            source=source,
            source_license=_source_license(source, license),
            license=_license(source, license),
            hallucinator=hallucinator.get("name"),
            hallucinator_params=hallucinator.get("params") or {},
            distorter=None if distorter is None else distorter.get("name"),
            distorter_params=None if distorter is None else distorter.get("params") or {},
            seed=configuration.get("seed"),
            rows_in=int(summary.get("rows") or 0),
            pairs=int(summary.get("pairs") or counts.rows),
            failed=int(summary.get("failed") or 0),
            failures=summary.get("failures") or {},
            counts=counts,
            cost_usd=summary.get("cost_usd_all_runs", summary.get("cost_usd")),
            seconds=summary.get("seconds_all_runs", summary.get("seconds")),
            built_with=summary.get("povidgen_version"),
            published_with=__version__,
            examples=examples,
            has_preview=has_preview,
            from_summary=True,
            dropped=dropped_of(summary),
        )
    return CardFacts(
        repo_id=repo_id,
        source="a datasets.Dataset (not recorded)",
        source_license=_source_license("", license),
        license=_license("", license),
        hallucinator=first.get("hallucinator"),
        hallucinator_params=_json(first.get("hallucinator_params")) or {},
        distorter=first.get("distorter"),
        distorter_params=_json(first.get("distorter_params")),
        seed=first.get("seed"),
        rows_in=counts.rows,
        pairs=counts.rows,
        failed=0,
        failures={},
        counts=counts,
        cost_usd=None,
        seconds=None,
        built_with=first.get("povidgen_version"),
        published_with=__version__,
        examples=examples,
        has_preview=has_preview,
        from_summary=False,
    )


def _json(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _license(source: str, license: str | None) -> str:
    if license is not None:
        return license
    return "apache-2.0" if source.startswith("demo(") else "other"


def _source_license(source: str, license: str | None) -> str:
    if license is not None:
        return license
    if source.startswith("demo("):
        return "apache-2.0 (synthetic scenes bundled with povidgen)"
    return "not given: the source dataset's own license applies (set it with --license)"


def _save_preview(files: Sequence[Path], out: Path) -> bool:
    """A contact sheet of the first pairs, at ``out``; ``False`` (none) for pairs without
    povidgen's ``provenance`` column, which the preview needs."""
    from povidgen.preview import REQUIRED_COLUMNS, save_preview

    schema = pq.read_schema(files[0])
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        logger.info("no preview picture: the pairs have no %s column", ", ".join(missing))
        return False
    rows = []
    for row in _rows(files, images=True):
        rows.append(row)
        if len(rows) == _PREVIEW_ROWS:
            break
    features = datasets.Features.from_arrow_schema(schema)
    save_preview(datasets.Dataset.from_list(rows, features=features), out)
    return True


# ---------------------------------------------------------------------------------------------
# Dry run and push


def _check_dry_run_folder(folder: Path, source: str | os.PathLike[str] | datasets.Dataset) -> None:
    if folder.exists() and not folder.is_dir():
        raise PublishError(f"--dry-run {folder} is not a folder")
    if isinstance(source, (str, os.PathLike)):
        source_path = Path(source).resolve()
        resolved = folder.resolve()
        if resolved == source_path or source_path in resolved.parents:
            raise PublishError(f"--dry-run {folder} is inside the source folder {source}")
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if path.is_dir() and relative == "data":
            continue
        if relative in (README, PREVIEW) or re.fullmatch(r"data/train-\d{5}\.parquet", relative):
            continue
        raise PublishError(
            f"--dry-run {folder} holds {relative}, which a push would not upload; "
            "use a new or empty folder"
        )


def _write_dry_run(
    folder: Path, files: Sequence[tuple[str, Path]], repo_id: str, revision: str | None
) -> PublishResult:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    wanted = {path for path, _ in files}
    for stale in (folder / "data").glob("train-*.parquet"):
        if f"data/{stale.name}" not in wanted:
            stale.unlink()
    if PREVIEW not in wanted:
        with contextlib.suppress(FileNotFoundError):
            (folder / PREVIEW).unlink()
    for path, local in files:
        shutil.copyfile(local, folder / path)
    logger.info("dry run: wrote %d files for %s to %s", len(files), repo_id, folder)
    return PublishResult(
        repo_id=repo_id,
        revision=revision,
        url=None,
        uploaded=tuple(path for path, _ in files),
        unchanged=(),
        commits=0,
        folder=folder,
    )


def _read_local(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise PublishError(f"cannot read {path}: {error}") from error


def _default_client(token: str | None) -> HubClient:
    from huggingface_hub import get_token

    resolved = token if token is not None else get_token()
    if not resolved:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN, log in with 'hf auth login', or pass token="
        )
    register_secret(resolved)
    return HfHubClient(resolved)


def _push(
    client: HubClient,
    repo_id: str,
    files: list[tuple[str, Path]],
    facts: CardFacts,
    *,
    private: bool,
    revision: str | None,
    staging: Path,
) -> PublishResult:
    url = _hub(f"cannot create {repo_id}", lambda: client.create_repo(repo_id, private=private))
    if revision is not None:
        _hub(
            f"cannot create the branch {revision!r} of {repo_id}",
            lambda: client.create_branch(repo_id, revision),
        )
    existing = _hub(
        f"cannot read {repo_id}'s card",
        lambda: client.read_text(repo_id, README, revision=revision),
    )
    card = staging / README
    card.write_text(render_card(facts, existing), encoding="utf-8")
    files = [*files, (README, card)]
    remote = _hub(
        f"cannot list {repo_id}",
        lambda: client.file_hashes(repo_id, [path for path, _ in files], revision=revision),
    )
    changed, unchanged = [], []
    for path, local in files:
        known = remote.get(path, set())
        if f"sha256:{sha256_of(local)}" in known or f"git:{git_blob_id(local)}" in known:
            unchanged.append(path)
        else:
            changed.append((path, local))
    batches = _batches([f for f in changed if f[0].startswith("data/")])
    last = [f for f in changed if not f[0].startswith("data/")]
    if last:
        batches.append(last)
    for number, batch in enumerate(batches, 1):
        message = (
            "povidgen: pairs and card"
            if len(batches) == 1
            else (f"povidgen: pairs and card (part {number} of {len(batches)})")
        )
        logger.info("pushing %s to %s (%d files)", message, repo_id, len(batch))
        _hub(
            f"cannot push to {repo_id}",
            functools.partial(client.commit, repo_id, batch, message=message, revision=revision),
        )
    if not batches:
        logger.info("%s already holds these files; nothing to push", repo_id)
    return PublishResult(
        repo_id=repo_id,
        revision=revision,
        url=url,
        uploaded=tuple(path for batch in batches for path, _ in batch),
        unchanged=tuple(unchanged),
        commits=len(batches),
        folder=None,
    )


def _batches(files: Sequence[tuple[str, Path]]) -> list[list[tuple[str, Path]]]:
    batches: list[list[tuple[str, Path]]] = []
    size = 0
    for item in files:
        length = item[1].stat().st_size
        if not batches or len(batches[-1]) >= COMMIT_FILES or size + length > COMMIT_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += length
    return batches


@contextlib.contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """``datasets``' and ``huggingface_hub``'s progress bars off (unless ``shown``), then as
    they were. Their environment variables keep priority, as those libraries want."""
    import importlib
    import warnings

    # the modules, not the classes their packages export under the same name
    datasets_tqdm = importlib.import_module("datasets.utils.tqdm")
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")

    if shown:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "cannot disable: the environment variable says no"
        datasets_was_off = datasets_tqdm.are_progress_bars_disabled()
        if not datasets_was_off:
            datasets_tqdm.disable_progress_bars()
        hub_quiet = hub_tqdm.disable_progress_bars()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hub_quiet.__exit__(None, None, None)
            if not datasets_was_off:
                datasets_tqdm.enable_progress_bars()


def _hub(what: str, call: Callable[[], _T]) -> _T:
    """``call()``, with any failure as a one-line :class:`PublishError` (token scrubbed)."""
    try:
        return call()
    except PovidgenError:
        raise
    except Exception as error:  # noqa: BLE001 - the Hub client's errors are many kinds
        reason = " ".join(str(error).split()) or type(error).__name__
        raise PublishError(scrub(f"{what}: {reason}")) from None
