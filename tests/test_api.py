"""The public surface: pinned, so that removing or renaming a name is a deliberate act."""

from __future__ import annotations

import subprocess
import sys

import pytest

import povidgen

EXPECTED = [
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


def test_all_is_pinned() -> None:
    assert povidgen.__all__ == EXPECTED


def test_every_name_in_all_exists() -> None:
    for name in povidgen.__all__:
        assert hasattr(povidgen, name), name


def _fresh_python(code: str) -> None:
    """Run ``code`` in a new interpreter (this one has imported torch long ago)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr


def test_import_povidgen_does_not_import_torch() -> None:
    _fresh_python(
        "import sys, povidgen\n"
        "assert 'torch' not in sys.modules, 'import povidgen imported torch'\n"
        # the builder, the hallucinators and the registry stay torch-free too
        "povidgen.PairBuilder, povidgen.RuleHallucinator, povidgen.OpenAIHallucinator\n"
        "povidgen.Distorter, povidgen.available_distorters(), povidgen.load_pairs\n"
        "assert 'torch' not in sys.modules, 'a torch-free name imported torch'\n"
    )


def test_the_command_line_starts_without_torch() -> None:
    # Every command pays for what `povidgen` imports before it parses its arguments: PyTorch
    # alone took seconds. `train` imports it once it trains; its parser and config do not.
    _fresh_python(
        "import contextlib, io, sys\n"
        "from povidgen.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['build', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "import povidgen.train\n"
        "povidgen.train.DPOConfig, povidgen.train.LOSS_TYPES\n"
        "assert 'torch' not in sys.modules, 'the command line imported torch'\n"
        "povidgen.train.dpo_loss\n"
        "assert 'torch' in sys.modules\n"
    )


def test_every_name_resolves_lazily_to_its_module() -> None:
    # in a fresh interpreter, so that nothing was imported before __getattr__ runs
    _fresh_python(
        "import importlib, povidgen\n"
        "assert set(povidgen._LAZY) | {'__version__'} == set(povidgen.__all__)\n"
        "for name, module in povidgen._LAZY.items():\n"
        "    assert getattr(povidgen, name) is getattr(importlib.import_module(module), name)\n"
        "namespace = {}\n"
        "exec('from povidgen import *', namespace)\n"
        "assert set(povidgen.__all__) <= set(namespace)\n"
    )


def test_dir_lists_the_lazy_names() -> None:
    assert set(EXPECTED) <= set(dir(povidgen))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = povidgen.Nope  # type: ignore[attr-defined]


def test_errors_share_one_root() -> None:
    for name in povidgen.__all__:
        value = getattr(povidgen, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, povidgen.PovidgenError), name


TRAIN_EXPECTED = [
    "FAMILIES",
    "F_DIVERGENCES",
    "LOSS_TYPES",
    "POVID_COMBINES",
    "DPOConfig",
    "DPOLoss",
    "DPOOutput",
    "DPOTrainer",
    "FamilyAdapter",
    "GroupSlices",
    "POVIDLoss",
    "POVIDOutput",
    "PackedBatch",
    "PairModeLoss",
    "PreferenceBatch",
    "PreferenceCollator",
    "ReferenceCache",
    "Scorer",
    "Scores",
    "SequenceLogps",
    "TrainResult",
    "TrainingDataError",
    "UnsupportedModelError",
    "dpo_loss",
    "family_of",
    "flex_block_mask",
    "gather_response_hidden",
    "model_fingerprint",
    "model_inputs",
    "noisy_logps",
    "noisy_tokens",
    "pack_shared_prefix",
    "packed_response_logps",
    "pair_mode_loss",
    "povid_loss",
    "response_targets",
    "sequence_logps",
    "unpack_response_logps",
]


def test_train_all_is_pinned() -> None:
    import povidgen.train

    assert povidgen.train.__all__ == TRAIN_EXPECTED
    for name in TRAIN_EXPECTED:
        assert hasattr(povidgen.train, name), name
