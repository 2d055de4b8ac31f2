"""The public surface: pinned, so that removing or renaming a name is a deliberate act."""

from __future__ import annotations

import povidgen

EXPECTED = [
    "BuildReport",
    "DatasetFormatError",
    "DiffusionNoise",
    "Distorter",
    "DistortionError",
    "Edit",
    "EditKind",
    "Example",
    "Hallucination",
    "HallucinationError",
    "Hallucinator",
    "ImageError",
    "InputError",
    "InvalidExampleError",
    "MissingColumnError",
    "PairBuilder",
    "PluginError",
    "PovidgenError",
    "PreferencePair",
    "Provenance",
    "RowError",
    "RuleHallucinator",
    "__version__",
    "available_distorters",
    "available_hallucinators",
    "derive_seed",
    "get_distorter",
    "get_hallucinator",
    "load_examples_file",
]


def test_all_is_pinned() -> None:
    assert povidgen.__all__ == EXPECTED


def test_every_name_in_all_exists() -> None:
    for name in povidgen.__all__:
        assert hasattr(povidgen, name), name


def test_errors_share_one_root() -> None:
    for name in povidgen.__all__:
        value = getattr(povidgen, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, povidgen.PovidgenError), name
