"""The few Hugging Face Hub calls :func:`povidgen.publish` makes, behind a small protocol.

:class:`HubClient` is the seam: :class:`HfHubClient` implements it with
``huggingface_hub.HfApi`` (the token from ``token=``, ``HF_TOKEN`` or the Hub login, by
``huggingface_hub``'s own lookup), and the tests pass a recording fake. Every call is on a
dataset repository.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["HfHubClient", "HubClient", "git_blob_id", "sha256_of"]


class HubClient(Protocol):
    """What publishing needs from the Hub (all on dataset repositories)."""

    def create_repo(self, repo_id: str, *, private: bool) -> str:
        """Create ``repo_id`` if it does not exist (an existing repo is left as it is);
        returns its URL."""
        ...

    def create_branch(self, repo_id: str, branch: str) -> None:
        """Create ``branch`` if it does not exist."""
        ...

    def read_text(self, repo_id: str, path: str, *, revision: str | None) -> str | None:
        """The text of ``path`` at ``revision``; ``None`` when the repo or file is absent."""
        ...

    def file_hashes(
        self, repo_id: str, paths: Sequence[str], *, revision: str | None
    ) -> dict[str, set[str]]:
        """For each of ``paths`` that exists at ``revision``: the hashes it is known by, as
        ``"sha256:<hex>"`` (its LFS object) and ``"git:<hex>"`` (its git blob id)."""
        ...

    def commit(
        self,
        repo_id: str,
        files: Sequence[tuple[str, Path]],
        *,
        message: str,
        revision: str | None,
    ) -> None:
        """One commit adding ``files`` (``(path in repo, local file)`` pairs)."""
        ...


class HfHubClient:
    """:class:`HubClient` through ``huggingface_hub.HfApi``.

    ``token=None`` lets ``huggingface_hub`` find one (``HF_TOKEN``, then the login saved by
    ``hf auth login``); ``endpoint`` points at another Hub (a mirror, or a test server).
    """

    def __init__(self, token: str | None = None, *, endpoint: str | None = None) -> None:
        from huggingface_hub import HfApi

        self._api = HfApi(token=token, endpoint=endpoint)

    def create_repo(self, repo_id: str, *, private: bool) -> str:
        """See :meth:`HubClient.create_repo`."""
        url = self._api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        return str(url)

    def create_branch(self, repo_id: str, branch: str) -> None:
        """See :meth:`HubClient.create_branch`."""
        self._api.create_branch(repo_id, branch=branch, repo_type="dataset", exist_ok=True)

    def read_text(self, repo_id: str, path: str, *, revision: str | None) -> str | None:
        """See :meth:`HubClient.read_text`."""
        from huggingface_hub.errors import (
            EntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            local = self._api.hf_hub_download(repo_id, path, repo_type="dataset", revision=revision)
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        return Path(local).read_text(encoding="utf-8")

    def file_hashes(
        self, repo_id: str, paths: Sequence[str], *, revision: str | None
    ) -> dict[str, set[str]]:
        """See :meth:`HubClient.file_hashes`."""
        from huggingface_hub import RepoFile
        from huggingface_hub.errors import RevisionNotFoundError

        try:
            infos = self._api.get_paths_info(
                repo_id, list(paths), repo_type="dataset", revision=revision
            )
        except RevisionNotFoundError:
            return {}
        hashes: dict[str, set[str]] = {}
        for info in infos:
            if isinstance(info, RepoFile):
                known = {f"git:{info.blob_id}"}
                if info.lfs is not None:
                    known.add(f"sha256:{info.lfs.sha256}")
                hashes[info.path] = known
        return hashes

    def commit(
        self,
        repo_id: str,
        files: Sequence[tuple[str, Path]],
        *,
        message: str,
        revision: str | None,
    ) -> None:
        """See :meth:`HubClient.commit`."""
        from huggingface_hub import CommitOperationAdd

        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local))
            for path, local in files
        ]
        self._api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            repo_type="dataset",
            revision=revision,
        )


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex (the Hub's LFS object id)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_id(path: Path) -> str:
    """The git blob id of a file (SHA-1 of ``blob <size>\\0`` and its bytes)."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
