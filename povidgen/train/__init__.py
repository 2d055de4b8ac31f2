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
"""

from povidgen.train.collate import PreferenceBatch, PreferenceCollator, TrainingDataError
from povidgen.train.config import DPOConfig
from povidgen.train.families import FAMILIES, FamilyAdapter, UnsupportedModelError, family_of
from povidgen.train.logps import SequenceLogps, sequence_logps
from povidgen.train.losses import (
    F_DIVERGENCES,
    LOSS_TYPES,
    POVID_COMBINES,
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
