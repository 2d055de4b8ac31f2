"""DPO training for vision-language models: losses, memory-lean log-probs, shared-prefix packing.

This subpackage depends on torch alone (transformers only where you bring a model) and reads
nothing from the data side of povidgen:

* :func:`dpo_loss` / :class:`DPOLoss`: every loss type of TRL's DPOTrainer on per-sequence
  log-probs, and :func:`povid_loss` / :class:`POVIDLoss`, POVID's dual-rejected objective;
* :func:`sequence_logps`: response-token log-prob sums straight from the last hidden states and
  the LM head, never building the ``[B, T, V]`` logits; :func:`noisy_logps`, POVID's stage-2
  score from the noisy-image argmax tokens;
* :func:`pack_shared_prefix` and friends: one forward for ``[prefix | chosen | rejected]`` with
  position ids and attention masks that keep the responses apart.

The names below are imported when first used (PEP 562), so that the configuration
(:class:`DPOConfig`, :data:`LOSS_TYPES`) and the command line's parser stay free of PyTorch.
"""

from typing import TYPE_CHECKING

from povidgen._lazy import lazy_names

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__ below
    from povidgen.train.collate import PreferenceBatch, PreferenceCollator, TrainingDataError
    from povidgen.train.config import F_DIVERGENCES, LOSS_TYPES, POVID_COMBINES, DPOConfig
    from povidgen.train.families import FAMILIES, FamilyAdapter, UnsupportedModelError, family_of
    from povidgen.train.logps import SequenceLogps, sequence_logps
    from povidgen.train.losses import (
        DPOLoss,
        DPOOutput,
        PairModeLoss,
        POVIDLoss,
        POVIDOutput,
        dpo_loss,
        pair_mode_loss,
        povid_loss,
    )
    from povidgen.train.noisy import noisy_logps, noisy_tokens
    from povidgen.train.packing import (
        GroupSlices,
        PackedBatch,
        flex_block_mask,
        gather_response_hidden,
        model_inputs,
        pack_shared_prefix,
        packed_response_logps,
        response_targets,
        unpack_response_logps,
    )
    from povidgen.train.reference import ReferenceCache, model_fingerprint
    from povidgen.train.step import Scorer, Scores
    from povidgen.train.trainer import DPOTrainer, TrainResult

_LAZY: dict[str, str] = {
    "PreferenceBatch": "povidgen.train.collate",
    "PreferenceCollator": "povidgen.train.collate",
    "TrainingDataError": "povidgen.train.collate",
    "DPOConfig": "povidgen.train.config",
    "F_DIVERGENCES": "povidgen.train.config",
    "LOSS_TYPES": "povidgen.train.config",
    "POVID_COMBINES": "povidgen.train.config",
    "FAMILIES": "povidgen.train.families",
    "FamilyAdapter": "povidgen.train.families",
    "UnsupportedModelError": "povidgen.train.families",
    "family_of": "povidgen.train.families",
    "SequenceLogps": "povidgen.train.logps",
    "sequence_logps": "povidgen.train.logps",
    "DPOLoss": "povidgen.train.losses",
    "DPOOutput": "povidgen.train.losses",
    "POVIDLoss": "povidgen.train.losses",
    "POVIDOutput": "povidgen.train.losses",
    "PairModeLoss": "povidgen.train.losses",
    "dpo_loss": "povidgen.train.losses",
    "pair_mode_loss": "povidgen.train.losses",
    "povid_loss": "povidgen.train.losses",
    "noisy_logps": "povidgen.train.noisy",
    "noisy_tokens": "povidgen.train.noisy",
    "GroupSlices": "povidgen.train.packing",
    "PackedBatch": "povidgen.train.packing",
    "flex_block_mask": "povidgen.train.packing",
    "gather_response_hidden": "povidgen.train.packing",
    "model_inputs": "povidgen.train.packing",
    "pack_shared_prefix": "povidgen.train.packing",
    "packed_response_logps": "povidgen.train.packing",
    "response_targets": "povidgen.train.packing",
    "unpack_response_logps": "povidgen.train.packing",
    "ReferenceCache": "povidgen.train.reference",
    "model_fingerprint": "povidgen.train.reference",
    "Scorer": "povidgen.train.step",
    "Scores": "povidgen.train.step",
    "DPOTrainer": "povidgen.train.trainer",
    "TrainResult": "povidgen.train.trainer",
}


__getattr__, __dir__ = lazy_names(globals(), _LAZY)


__all__ = [
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
