"""The trainer's configuration: one pydantic model, checked when it is built.

Every field has the default a POVID run wants (``beta = 0.1``, LoRA ``r = 128`` /
``alpha = 256`` on every linear layer of the language model, cosine schedule with 3% warm-up)
except the learning rate, which follows TRL's default (POVID trains 7B models at ``1e-7``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
"""Every loss type :func:`~povidgen.train.dpo_loss` accepts (the loss types of TRL's
``DPOTrainer``). Here, not in :mod:`povidgen.train.losses`, so that the command line can offer
them without importing PyTorch."""

F_DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
"""The f-divergences of f-DPO (arXiv:2309.16240) that :func:`~povidgen.train.dpo_loss`
accepts."""

POVID_COMBINES: tuple[str, ...] = ("mean_of_dpo", "single_sigmoid")
"""The two ways :func:`~povidgen.train.povid_loss` combines its two rejected responses."""

__all__ = ["DPOConfig", "Mode", "RefStrategy"]

Mode = Literal["text", "image", "povid", "auto"]
"""``text``: chosen vs the hallucinated answer under the same image (POVID stage 1).
``image``: the chosen answer under the clean vs the distorted image (mDPO-style).
``povid``: POVID stage 2, the text loss plus the model's own argmax answer under a distorted
image as a second rejected answer.
``auto``: each row by its pair mode (``provenance.pair_mode``, else read from the row, see
:func:`povidgen.pairs.modes.pair_mode_of`): text rows get ``text``'s loss, image rows
``image``'s, both rows ``povid``'s, in one batch (:func:`povidgen.train.pair_mode_loss`)."""

RefStrategy = Literal["adapter", "copy", "precomputed"]
"""Where the reference log-probs come from: the policy with its LoRA adapter disabled, a
separate frozen copy of the model, or a cache of log-probs computed once before training."""


class DPOConfig(BaseModel):
    """Everything :class:`povidgen.train.DPOTrainer` needs besides the model, processor and data.

    Attributes:
        mode: see :data:`Mode`.
        loss_type: one of TRL's loss types, or a list of them mixed with ``loss_weights``
            (``text`` and ``image`` modes; ``povid`` uses :func:`povid_loss`).
        beta: DPO's inverse temperature (POVID's tau).
        povid_combine: ``"mean_of_dpo"`` (the official code) or ``"single_sigmoid"`` (the paper).
        povid_weights: ``(noisy weight, text weight)`` of :func:`povid_loss`.
        rpo_alpha: weight of an NLL term on the chosen answer (TRL's ``rpo_alpha``; RPO,
            Pang et al. 2024): the loss gains ``rpo_alpha`` times the mean negative log-prob of
            the chosen answers' tokens (under the clean image), in every mode. ``0`` (the
            default) adds nothing.
        overlap: POVID stage 2, where the noisy argmax equals the gold token: ``"keep"`` (the
            official code), ``"second_best"`` or ``"mask"``.
        distorter: registered distorter name that makes the rejected image in the collator;
            ``None`` uses the dataset's ``rejected_images`` when it has them, and in ``povid``
            mode otherwise POVID's ``DiffusionNoise(step=500)``.
        distorter_options: keyword arguments for the distorter.
        learning_rate, weight_decay, adam_beta1, adam_beta2, adam_epsilon: AdamW.
        lr_scheduler: ``"cosine"``, ``"linear"`` or ``"constant"``, after ``warmup_ratio`` of the
            optimiser steps of linear warm-up.
        max_steps: optimiser steps; when ``None``, ``epochs`` passes over the data.
        batch_size: pairs per device and micro-step; ``grad_accum`` micro-steps per optimiser step.
        max_grad_norm: global gradient-norm clip (``None``: no clipping).
        full: train every weight instead of a LoRA adapter.
        lora_r, lora_alpha, lora_dropout: the adapter, on every linear layer of the language model.
        ref: see :data:`RefStrategy`; ``None`` picks ``"adapter"`` with LoRA, ``"copy"`` otherwise.
        ref_cache_dir: where ``ref="precomputed"`` keeps its log-prob cache (default: the
            output folder's ``ref_logps/``).
        max_length: longest ``[prompt | response]`` sequence; longer responses are truncated
            (as TRL does), a prompt whose image tokens would be cut is an error.
        packing: score ``[prompt | chosen | rejected]`` in one shared-prefix forward with the
            vision tower once per pair; ``False`` runs the plain layout (one sequence per
            response, the model's own forward).
        padding_free: with ``packing``, put several pairs in one row without padding.
        gradient_checkpointing: recompute activations in backward.
        chunk_size: response tokens projected onto the vocabulary at a time.
        seed: seeds the data order, the distorter, LoRA initialisation and dropout.
        save_steps: write a checkpoint every this many optimiser steps (and always at the end).
        logging_steps: write metrics every this many optimiser steps.
        report_to: also log to ``"tensorboard"`` and/or ``"wandb"`` (must be installed).
        num_workers: DataLoader worker processes for decoding and distorting images.
        distributed: under ``torchrun``, ``"ddp"`` replicates the model in every process
            (``DistributedDataParallel``); ``"fsdp"`` shards it (FSDP2's ``fully_shard`` on
            every decoder layer and on the rest of the policy). Ignored in one process.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Mode = "text"
    loss_type: str | list[str] = "sigmoid"
    loss_weights: list[float] | None = None
    beta: Annotated[float, Field(gt=0)] = 0.1
    label_smoothing: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    rpo_alpha: Annotated[float, Field(ge=0)] = 0.0
    povid_combine: Literal["mean_of_dpo", "single_sigmoid"] = "mean_of_dpo"
    povid_weights: tuple[float, float] = (0.5, 0.5)
    overlap: Literal["keep", "second_best", "mask"] = "keep"
    distorter: str | None = None
    distorter_options: dict[str, Any] = Field(default_factory=dict)

    learning_rate: Annotated[float, Field(gt=0)] = 1e-6
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    adam_beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    adam_beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    adam_epsilon: Annotated[float, Field(gt=0)] = 1e-8
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    max_steps: Annotated[int | None, Field(ge=1)] = None
    epochs: Annotated[float, Field(gt=0)] = 1.0
    batch_size: Annotated[int, Field(ge=1)] = 1
    grad_accum: Annotated[int, Field(ge=1)] = 1
    max_grad_norm: Annotated[float | None, Field(gt=0)] = 1.0

    full: bool = False
    lora_r: Annotated[int, Field(ge=1)] = 128
    lora_alpha: Annotated[int, Field(ge=1)] = 256
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    ref: RefStrategy | None = None
    ref_cache_dir: str | None = None

    max_length: Annotated[int | None, Field(ge=2)] = None
    packing: bool = True
    padding_free: bool = True
    gradient_checkpointing: bool = False
    chunk_size: Annotated[int, Field(ge=1)] = 1024

    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    save_steps: Annotated[int | None, Field(ge=1)] = None
    logging_steps: Annotated[int, Field(ge=1)] = 1
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    num_workers: Annotated[int, Field(ge=0)] = 0
    distributed: Literal["ddp", "fsdp"] = "ddp"

    @model_validator(mode="after")
    def _check(self) -> DPOConfig:
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        unknown = [t for t in types if t not in LOSS_TYPES]
        if not types or unknown:
            raise ValueError(
                f"unknown loss_type {unknown or types}; valid: {', '.join(LOSS_TYPES)}"
            )
        if self.loss_weights is not None and len(self.loss_weights) != len(types):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} entries for {len(types)} loss types"
            )
        if self.mode in ("povid", "auto") and types != ["sigmoid"]:
            raise ValueError(
                f"mode {self.mode!r} uses POVID's own loss (povid_combine); loss_type must stay "
                "'sigmoid'"
            )
        if self.povid_combine not in POVID_COMBINES:  # pragma: no cover - Literal guards it
            raise ValueError(f"povid_combine must be one of {POVID_COMBINES}")
        if self.full and self.ref == "adapter":
            raise ValueError("ref='adapter' needs a LoRA adapter; with full=True use 'copy'")
        return self

    @property
    def loss_types(self) -> list[str]:
        """``loss_type`` as a list."""
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)

    @property
    def reference(self) -> RefStrategy:
        """The reference strategy in force: ``ref``, or its default for the adapter choice."""
        if self.ref is not None:
            return self.ref
        return "copy" if self.full else "adapter"


def required_columns(mode: str, has_distorter: bool) -> list[str]:
    """The dataset columns a mode needs."""
    columns = ["images", "prompt", "chosen"]
    if mode in ("text", "povid", "auto"):
        columns.append("rejected")
    if mode == "image" and not has_distorter:
        columns.append("rejected_images")
    return columns
