"""povidgen: preference data for vision-language models, the POVID way.

Rows of (image, prompt, answer) become chosen/rejected pairs: a :class:`Hallucinator` rewrites
the answer with typed, span-located errors, and an optional :class:`Distorter` corrupts the
image. :class:`PairBuilder` runs both over a dataset and writes TRL's vision preference format.
"""

from importlib.metadata import PackageNotFoundError, version

from povidgen.distort.base import Distorter
from povidgen.distort.blur import GaussianBlur
from povidgen.distort.collate import DistortingCollator
from povidgen.distort.color import ColorJitter
from povidgen.distort.compose import Compose, OneOf
from povidgen.distort.crop import RandomResizedCrop
from povidgen.distort.diffusion import DiffusionNoise
from povidgen.distort.jpeg import JPEGCompression
from povidgen.distort.mask import PatchMask
from povidgen.distort.noise import GaussianNoise
from povidgen.distort.resample import Downscale
from povidgen.errors import (
    BudgetExceededError,
    DatasetFormatError,
    DistortionError,
    HallucinationError,
    ImageError,
    InputError,
    InvalidExampleError,
    MissingColumnError,
    PluginError,
    PovidgenError,
    ProviderError,
    ProviderFatalError,
    RunStoppedError,
    VerificationError,
)
from povidgen.hallucinate.anthropic_api import AnthropicBackend, AnthropicHallucinator
from povidgen.hallucinate.backend import Backend, ChatReply, ChatRequest
from povidgen.hallucinate.base import Hallucinator
from povidgen.hallucinate.llm import LLMHallucinator
from povidgen.hallucinate.openai_api import OpenAIBackend, OpenAIHallucinator
from povidgen.hallucinate.pricing import ModelPrice, Usage
from povidgen.hallucinate.prompts import PromptConfig
from povidgen.hallucinate.rule import RuleHallucinator
from povidgen.hallucinate.scripted import ScriptedBackend
from povidgen.hallucinate.transformers_local import TransformersHallucinator
from povidgen.hub import publish
from povidgen.pairs.build_config import BuildConfig
from povidgen.pairs.builder import BuildReport, PairBuilder
from povidgen.pairs.merge import MergeReport, merge_builds
from povidgen.pairs.output import OutputFolderError
from povidgen.pairs.shards import ShardLimits, load_pairs
from povidgen.redact import register_secret
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
    Exchange,
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
    "AnthropicBackend",
    "AnthropicHallucinator",
    "Backend",
    "BudgetExceededError",
    "BuildConfig",
    "BuildReport",
    "ChatReply",
    "ChatRequest",
    "ColorJitter",
    "Compose",
    "DatasetFormatError",
    "DiffusionNoise",
    "Distorter",
    "DistortingCollator",
    "DistortionError",
    "Downscale",
    "Edit",
    "EditKind",
    "Example",
    "Exchange",
    "GaussianBlur",
    "GaussianNoise",
    "Hallucination",
    "HallucinationError",
    "Hallucinator",
    "ImageError",
    "InputError",
    "InvalidExampleError",
    "JPEGCompression",
    "LLMHallucinator",
    "MergeReport",
    "MissingColumnError",
    "ModelPrice",
    "OneOf",
    "OpenAIBackend",
    "OpenAIHallucinator",
    "OutputFolderError",
    "PairBuilder",
    "PatchMask",
    "PluginError",
    "PovidgenError",
    "PreferencePair",
    "PromptConfig",
    "Provenance",
    "ProviderError",
    "ProviderFatalError",
    "RandomResizedCrop",
    "RowError",
    "RuleHallucinator",
    "RunStoppedError",
    "ScriptedBackend",
    "ShardLimits",
    "TransformersHallucinator",
    "Usage",
    "VerificationError",
    "__version__",
    "available_distorters",
    "available_hallucinators",
    "derive_seed",
    "get_distorter",
    "get_hallucinator",
    "load_examples_file",
    "load_pairs",
    "merge_builds",
    "publish",
    "register_secret",
]
