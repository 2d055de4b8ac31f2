"""povidgen: preference data for vision-language models, the POVID way.

Rows of (image, prompt, answer) become chosen/rejected pairs: a :class:`Hallucinator` rewrites
the answer with typed, span-located errors, and an optional :class:`Distorter` corrupts the
image. :class:`PairBuilder` runs both over a dataset and writes TRL's vision preference format.
"""

from importlib.metadata import PackageNotFoundError, version

from povidgen.distort.base import Distorter
from povidgen.distort.diffusion import DiffusionNoise
from povidgen.errors import (
    DatasetFormatError,
    DistortionError,
    HallucinationError,
    ImageError,
    InputError,
    InvalidExampleError,
    MissingColumnError,
    PluginError,
    PovidgenError,
)
from povidgen.hallucinate.base import Hallucinator
from povidgen.hallucinate.rule import RuleHallucinator
from povidgen.pairs.builder import BuildReport, PairBuilder
from povidgen.registry import (
    available_distorters,
    available_hallucinators,
    get_distorter,
    get_hallucinator,
)
from povidgen.schema import (
    Edit,
    EditKind,
    Example,
    Hallucination,
    PreferencePair,
    Provenance,
    RowError,
)
from povidgen.seeding import derive_seed
from povidgen.sources.files import load_examples_file

try:
    __version__: str = version("povidgen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
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
