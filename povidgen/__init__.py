"""povidgen: preference data for vision-language models, the POVID way.

Rows of (image, prompt, answer) become chosen/rejected pairs: a :class:`Hallucinator` rewrites
the answer with typed, span-located errors, and an optional :class:`Distorter` corrupts the
image. :class:`PairBuilder` runs both over a dataset and writes TRL's vision preference format.

The names below are imported when first used (PEP 562), so ``import povidgen`` stays cheap: a
distorter, the collator or the local-model hallucinator brings in PyTorch only when it is
touched, and the command line starts without it.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from povidgen._lazy import lazy_names

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__ below
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

# each public name and the module that defines it, imported on first access
_LAZY: dict[str, str] = {
    "Distorter": "povidgen.distort.base",
    "GaussianBlur": "povidgen.distort.blur",
    "DistortingCollator": "povidgen.distort.collate",
    "ColorJitter": "povidgen.distort.color",
    "Compose": "povidgen.distort.compose",
    "OneOf": "povidgen.distort.compose",
    "RandomResizedCrop": "povidgen.distort.crop",
    "DiffusionNoise": "povidgen.distort.diffusion",
    "JPEGCompression": "povidgen.distort.jpeg",
    "PatchMask": "povidgen.distort.mask",
    "GaussianNoise": "povidgen.distort.noise",
    "Downscale": "povidgen.distort.resample",
    "BudgetExceededError": "povidgen.errors",
    "DatasetFormatError": "povidgen.errors",
    "DistortionError": "povidgen.errors",
    "HallucinationError": "povidgen.errors",
    "ImageError": "povidgen.errors",
    "InputError": "povidgen.errors",
    "InvalidExampleError": "povidgen.errors",
    "MissingColumnError": "povidgen.errors",
    "PluginError": "povidgen.errors",
    "PovidgenError": "povidgen.errors",
    "ProviderError": "povidgen.errors",
    "ProviderFatalError": "povidgen.errors",
    "RunStoppedError": "povidgen.errors",
    "VerificationError": "povidgen.errors",
    "AnthropicBackend": "povidgen.hallucinate.anthropic_api",
    "AnthropicHallucinator": "povidgen.hallucinate.anthropic_api",
    "Backend": "povidgen.hallucinate.backend",
    "ChatReply": "povidgen.hallucinate.backend",
    "ChatRequest": "povidgen.hallucinate.backend",
    "Hallucinator": "povidgen.hallucinate.base",
    "LLMHallucinator": "povidgen.hallucinate.llm",
    "OpenAIBackend": "povidgen.hallucinate.openai_api",
    "OpenAIHallucinator": "povidgen.hallucinate.openai_api",
    "ModelPrice": "povidgen.hallucinate.pricing",
    "Usage": "povidgen.hallucinate.pricing",
    "PromptConfig": "povidgen.hallucinate.prompts",
    "RuleHallucinator": "povidgen.hallucinate.rule",
    "ScriptedBackend": "povidgen.hallucinate.scripted",
    "TransformersHallucinator": "povidgen.hallucinate.transformers_local",
    "publish": "povidgen.hub",
    "BuildConfig": "povidgen.pairs.build_config",
    "BuildReport": "povidgen.pairs.builder",
    "PairBuilder": "povidgen.pairs.builder",
    "MergeReport": "povidgen.pairs.merge",
    "merge_builds": "povidgen.pairs.merge",
    "OutputFolderError": "povidgen.pairs.output",
    "ShardLimits": "povidgen.pairs.shards",
    "load_pairs": "povidgen.pairs.shards",
    "register_secret": "povidgen.redact",
    "available_distorters": "povidgen.registry",
    "available_hallucinators": "povidgen.registry",
    "get_distorter": "povidgen.registry",
    "get_hallucinator": "povidgen.registry",
    "Edit": "povidgen.schema",
    "EditKind": "povidgen.schema",
    "Example": "povidgen.schema",
    "Exchange": "povidgen.schema",
    "Hallucination": "povidgen.schema",
    "PreferencePair": "povidgen.schema",
    "Provenance": "povidgen.schema",
    "RowError": "povidgen.schema",
    "derive_seed": "povidgen.seeding",
    "load_examples_file": "povidgen.sources.files",
}

try:
    __version__: str = version("povidgen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


__getattr__, __dir__ = lazy_names(globals(), _LAZY)


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
