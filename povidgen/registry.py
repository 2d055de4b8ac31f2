"""Finding hallucinators and distorters by name, through Python entry points.

Built-ins register exactly as third-party packages do, in their package metadata::

    [project.entry-points."povidgen.hallucinators"]
    mine = "my_package.module:MyHallucinator"

    [project.entry-points."povidgen.distorters"]
    mine = "my_package.module:MyDistorter"

``get_hallucinator("mine", **options)`` then loads the class and calls it with ``options``.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from povidgen.distort.base import Distorter
from povidgen.errors import PluginError
from povidgen.hallucinate.base import Hallucinator

__all__ = [
    "DISTORTER_GROUP",
    "HALLUCINATOR_GROUP",
    "available_distorters",
    "available_hallucinators",
    "get_distorter",
    "get_hallucinator",
]

HALLUCINATOR_GROUP = "povidgen.hallucinators"
DISTORTER_GROUP = "povidgen.distorters"


def available_hallucinators() -> list[str]:
    """Names registered in the ``povidgen.hallucinators`` entry-point group, sorted."""
    return sorted({ep.name for ep in entry_points(group=HALLUCINATOR_GROUP)})


def available_distorters() -> list[str]:
    """Names registered in the ``povidgen.distorters`` entry-point group, sorted."""
    return sorted({ep.name for ep in entry_points(group=DISTORTER_GROUP)})


def get_hallucinator(name: str, **options: Any) -> Hallucinator:
    """Instantiate the hallucinator registered as ``name`` with ``options``."""
    return cast(Hallucinator, _instantiate(HALLUCINATOR_GROUP, name, Hallucinator, options))


def get_distorter(name: str, **options: Any) -> Distorter:
    """Instantiate the distorter registered as ``name`` with ``options``."""
    return cast(Distorter, _instantiate(DISTORTER_GROUP, name, Distorter, options))


def _instantiate(group: str, name: str, base: type, options: dict[str, Any]) -> object:
    instance = _load(group, name, base.__name__.lower())(**options)
    if not isinstance(instance, base):
        raise PluginError(
            f"entry point {name!r} in {group!r} made a {type(instance).__name__}, "
            f"not a povidgen.{base.__name__}"
        )
    return instance


def _load(group: str, name: str, what: str) -> Any:
    matches: list[EntryPoint] = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in entry_points(group=group)})) or "(none)"
        raise PluginError(
            f"no {what} named {name!r} is registered in the {group!r} entry-point group; "
            f"available: {known}"
        )
    try:
        return matches[0].load()
    except Exception as error:
        raise PluginError(f"cannot load {what} {name!r} ({matches[0].value}): {error}") from error
