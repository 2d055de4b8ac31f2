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

from povidgen.train.logps import SequenceLogps, sequence_logps
from povidgen.train.losses import (
    F_DIVERGENCES,
    LOSS_TYPES,
    POVID_COMBINES,
    DPOLoss,
    DPOOutput,
    POVIDLoss,
    POVIDOutput,
    dpo_loss,
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

__all__ = [
    "F_DIVERGENCES",
    "LOSS_TYPES",
    "POVID_COMBINES",
    "DPOLoss",
    "DPOOutput",
    "GroupSlices",
    "POVIDLoss",
    "POVIDOutput",
    "PackedBatch",
    "SequenceLogps",
    "dpo_loss",
    "flex_block_mask",
    "gather_response_hidden",
    "model_inputs",
    "noisy_logps",
    "noisy_tokens",
    "pack_shared_prefix",
    "packed_response_logps",
    "povid_loss",
    "response_targets",
    "sequence_logps",
    "unpack_response_logps",
]
