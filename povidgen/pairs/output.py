"""The output folder of a build: povidgen replaces only what it provably wrote itself.

Rules (each checked when the run starts and again at the moment of writing):

* A folder is povidgen's only if it holds :data:`MARKER` (``povidgen-build.json``), which
  povidgen writes into every output before anything else, with the build's configuration. A
  non-empty folder without it is never written into, replaced or deleted, ``--overwrite`` or
  not.
* A folder holding an unfinished build with the same configuration is resumed in place; a
  finished one is left alone; one built with another configuration is an error naming the
  difference, unless ``--overwrite``, which builds anew in a staging folder and swaps it in
  only when it is finished.
* The output is never an input: not the dataset folder, not inside it, not holding it.
* ``--out`` must not be a symbolic link (dangling or not) or a file, and its parent must be
  writable.
* One build at a time per folder: a lock (``fcntl.flock`` on the sibling ``.NAME.lock``,
  removed when the run ends) keeps a second build out with a clear error.
* The new dataset is written into a sibling staging folder (``.NAME.partial-XXXX``) and swapped
  in with one ``renameat2(RENAME_EXCHANGE)`` system call where the kernel has it, so at every
  instant ``--out`` holds a loadable dataset, the old or the new. (Elsewhere two renames; a run
  killed between them is repaired by the next one, which puts the old folder back.) Staging and
  old folders of dead runs are removed by the next run, and only those holding the marker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from povidgen.errors import PovidgenError

__all__ = ["MARKER", "FolderState", "OutputFolder", "OutputFolderError", "unwritable_parent"]

FolderState = Literal["new", "resume", "complete", "replace"]
"""What a build does with its output folder: start it, resume it, leave it (finished), or
build anew beside it and swap (``--overwrite``)."""

MARKER = "povidgen-build.json"
"""The file that marks a folder as a povidgen build output."""


class OutputFolderError(PovidgenError):
    """The output folder cannot be used (the message says why and what to do)."""


class OutputFolder:
    """A build's output folder and the rules above.

    Args:
        path: ``--out``.
        overwrite: an earlier povidgen output there may be replaced.
        inputs: paths the build reads (the dataset, the image folder): never written.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, overwrite: bool, inputs: Sequence[Path] = ()
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.inputs = [Path(p) for p in inputs]

    # -- checks -------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`OutputFolderError` if writing ``path`` would break a rule (a link, a
        file, an unwritable parent, an input, a non-empty folder that is not povidgen's)."""
        path = self.path
        if path.is_symlink():
            target = os.readlink(path)
            state = "" if path.exists() else ", which does not exist"
            raise OutputFolderError(
                f"--out {path} is a symbolic link to {target}{state}; give a real folder"
            )
        if path.exists() and not path.is_dir():
            raise OutputFolderError(f"--out {path} is a file, not a folder")
        problem = unwritable_parent(path)
        if problem is not None:
            raise OutputFolderError(f"--out {path}: {problem}")
        resolved = path.resolve()
        for source in self.inputs:
            source = source.resolve()
            if resolved == source or source in resolved.parents or resolved in source.parents:
                raise OutputFolderError(
                    f"--out {path} is, holds or lies inside the input {source}; "
                    "choose a folder apart from the inputs"
                )
        if path.is_dir() and any(path.iterdir()) and not (path / MARKER).is_file():
            raise OutputFolderError(
                f"--out {path} exists, is not empty and is not a povidgen output folder "
                f"(no {MARKER}); choose a new or empty folder"
            )

    def state(self, configuration: Mapping[str, Any]) -> FolderState:
        """What a build with ``configuration`` does with the folder (checked under the lock).

        Raises:
            OutputFolderError: the folder holds another build and ``overwrite`` is off.
        """
        self.check()
        path = self.path
        if not path.exists() or not any(path.iterdir()):
            return "new"
        marker = read_json_object(path / MARKER)
        earlier = marker.get("configuration") if marker else None
        wanted = _normalised(configuration)
        if not isinstance(earlier, dict):
            if self.overwrite:
                return "replace"
            raise OutputFolderError(
                f"--out {path} holds a povidgen output in an older layout; pass --overwrite "
                "to replace it"
            )
        if earlier != wanted:
            if self.overwrite:
                return "replace"
            raise OutputFolderError(
                f"--out {path} holds a build with another configuration "
                f"({_difference(earlier, wanted)}); pass --overwrite to replace it, or "
                "choose another folder"
            )
        summary = read_json_object(path / "summary.json")
        if summary and summary.get("complete") is True:
            return "replace" if self.overwrite else "complete"
        return "resume"

    def begin(self, configuration: Mapping[str, Any]) -> Path:
        """Create the folder (if new) with its marker, and return it.

        The folder is made with one ``mkdir``; if it appeared since the last check, the check
        runs again, so a folder a user made in the meantime is never written into.
        """
        if not self.path.exists():
            with contextlib.suppress(FileExistsError):  # made since: checked below
                self.path.mkdir(parents=True)
        if not (self.path / MARKER).is_file():
            self.check()
            if any(self.path.iterdir()):
                raise OutputFolderError(f"--out {self.path} changed during the start of the run")
            _write_marker(self.path, configuration)
        return self.path

    def holds_dataset(self) -> bool:
        """Whether ``path`` holds a povidgen output now."""
        return (self.path / MARKER).is_file()

    # -- the run ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock for a run; a second run gets :class:`OutputFolderError`.

        The lock file (``.NAME.lock`` beside the output) is removed when the run ends; a run
        that locked a file another run had just removed tries again on the new one.
        """
        import fcntl

        parent = self.path.absolute().parent
        lock_path = parent / f".{self.path.name}.lock"
        while True:
            try:
                parent.mkdir(parents=True, exist_ok=True)
                handle = lock_path.open("a+")
            except OSError as error:
                raise OutputFolderError(
                    f"--out {self.path}: cannot create {lock_path}: {error.strerror or error}"
                ) from error
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                handle.close()
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise OutputFolderError(
                    f"another povidgen build is writing {self.path}; wait for it to finish or "
                    "choose another folder"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break  # the file is still the lock: it is ours
            handle.close()  # it was removed by the run that just ended: lock the new one
        try:
            self._repair()
            self.check()  # the repair may have put an earlier output back
            yield
        finally:
            lock_path.unlink(missing_ok=True)
            handle.close()

    def staging(self, configuration: Mapping[str, Any] | None = None) -> Path:
        """A new sibling staging folder that already holds the marker."""
        parent = self.path.absolute().parent
        folder = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=parent))
        os.chmod(folder, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs follow the umask
        _write_marker(folder, configuration)
        return folder

    def commit(self, staging: Path) -> None:
        """Swap ``staging`` in for ``path`` (the rules are checked once more first)."""
        self.check()
        path = self.path
        if not path.exists():
            os.rename(staging, path)
            return
        if _exchange(staging, path):
            shutil.rmtree(staging)  # it now holds the old output
            return
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.absolute().parent))
        os.rmdir(old)
        os.rename(path, old)
        os.rename(staging, path)
        shutil.rmtree(old)

    def _repair(self) -> None:
        """Under the lock: put back an output a killed run took away, and remove the staging
        and old folders of dead runs (only those holding the marker)."""
        parent = self.path.absolute().parent
        name = self.path.name
        olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
        if not self.path.exists() and olds and (olds[-1] / MARKER).is_file():
            os.rename(olds[-1], self.path)
        for stale in [*parent.glob(f".{name}.partial-*"), *parent.glob(f".{name}.old-*")]:
            if stale.is_dir() and not stale.is_symlink() and (stale / MARKER).is_file():
                shutil.rmtree(stale, ignore_errors=True)


def unwritable_parent(path: Path) -> str | None:
    """Why ``path`` could not be created (its nearest existing parent is no writable folder),
    or ``None``."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system call is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # the kernel or the file system cannot exchange
    raise OSError(code, os.strerror(code), str(second))


def _write_marker(folder: Path, configuration: Mapping[str, Any] | None) -> None:
    marker: dict[str, Any] = {
        "povidgen": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if configuration is not None:
        marker["configuration"] = _normalised(configuration)
    temporary = folder / f".{MARKER}.tmp"
    temporary.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, folder / MARKER)


def _normalised(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """``configuration`` as it reads back from JSON (tuples become lists, keys sorted)."""
    result: dict[str, Any] = json.loads(json.dumps(configuration, sort_keys=True))
    return result


def _difference(earlier: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> str:
    """The settings that differ, as ``name: X there, Y now`` (at most three)."""
    found: list[str] = []
    for key in sorted(set(earlier) | set(now)):
        before, after = earlier.get(key), now.get(key)
        if before == after:
            continue
        name = f"{prefix}{key}"
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found.append(_difference(before, after, f"{name}."))
        else:
            found.append(f"{name}: {json.dumps(before)} there, {json.dumps(after)} now")
    shown = [f for f in found if f]
    return "; ".join(shown[:3]) + (f"; and {len(shown) - 3} more" if len(shown) > 3 else "")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (a marker, a summary), or ``None`` when it is missing,
    unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _version() -> str:
    from povidgen import __version__

    return __version__
