"""``povidgen push``: publish a build folder and its dataset card to the Hugging Face Hub.

::

    povidgen push DIR REPO_ID [--private | --public] [--revision R] [--license L]
                              [--dry-run LOCAL_DIR]

The token comes from ``HF_TOKEN`` or the saved Hub login (``hf auth login``) and is never
printed. ``--dry-run LOCAL_DIR`` writes the files a push would upload into ``LOCAL_DIR`` and
touches no network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Register ``push`` on the CLI's subcommands."""
    parser = subcommands.add_parser(
        "push",
        help="publish built pairs and their dataset card to the Hugging Face Hub",
        description="Upload a folder written by 'povidgen build' (its parquet shards, a "
        "dataset card with the build's provenance, a preview picture) to a Hub dataset "
        "repository. Files the repository already holds are not sent again. The token comes "
        "from HF_TOKEN or 'hf auth login'.",
    )
    parser.add_argument("folder", type=Path, metavar="DIR", help="a folder written by build")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the dataset repository, owner/name")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--private",
        dest="private",
        action="store_true",
        default=True,
        help="create the repository private (the default)",
    )
    visibility.add_argument(
        "--public", dest="private", action="store_false", help="create the repository public"
    )
    parser.add_argument(
        "--revision", default=None, metavar="R", help="the branch to push to (created if missing)"
    )
    parser.add_argument(
        "--license",
        default=None,
        metavar="L",
        help="the source data's license for the card (default: apache-2.0 for --demo builds, "
        "else 'other')",
    )
    parser.add_argument(
        "--dry-run",
        type=Path,
        default=None,
        metavar="LOCAL_DIR",
        help="write the files that would be uploaded into LOCAL_DIR instead of pushing",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``povidgen push`` (errors are :class:`povidgen.PovidgenError`, reported by the CLI)."""
    from povidgen.hub import publish

    result = publish(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
        license=args.license,
        progress=sys.stderr.isatty(),
    )
    if result.folder is not None:
        print(f"dry run: wrote {len(result.uploaded)} files to {result.folder}")
        for path in result.uploaded:
            print(f"  {path}")
        return 0
    where = result.repo_id if result.revision is None else f"{result.repo_id}@{result.revision}"
    if result.uploaded:
        print(
            f"pushed {len(result.uploaded)} files to {where} in {result.commits} commit(s) "
            f"({len(result.unchanged)} unchanged)"
        )
    else:
        print(f"{where} already holds these {len(result.unchanged)} files; nothing pushed")
    if result.url:
        print(result.url)
    return 0
