"""The DPO trainer: POVID's two stages (and plain DPO) on Hugging Face VLMs.

One optimiser step::

    for each of grad_accum micro-batches of batch_size pairs:
        features  = vision tower(images)                 once, no grad if the tower is frozen
        policy    = Scorer.score(model, batch, features) packed [prompt | chosen | rejected]
        reference = adapter disabled / copy / cache      no grad, same features
        loss      = dpo_loss(...) or povid_loss(...)     / grad_accum, backward
    clip the global gradient norm, AdamW step, scheduler step (warm-up then cosine)

Checkpoints (``checkpoints/step-N`` in the output folder, written to a temporary folder and
renamed into place) hold the trainable weights, the optimiser and scheduler states, every RNG
state and the data position; ``train(resume=True)`` continues from the newest one and gives
the same loss curve as an uninterrupted run (on CPU in fp32, bit for bit). Metrics are written
every ``logging_steps`` steps to ``metrics.jsonl`` with TRL's names.

Under ``torchrun`` (``torch.distributed`` initialised) the policy forward is wrapped in
``DistributedDataParallel`` (``distributed="ddp"``) or sharded with FSDP2
(``distributed="fsdp"``: ``fully_shard`` on every decoder layer and on the policy module as
the root), and each rank reads its own slice of every global batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from povidgen.train.collate import PreferenceBatch, PreferenceCollator, TrainingDataError
from povidgen.train.config import DPOConfig, required_columns
from povidgen.train.families import family_of, unwrap_model, unwrap_peft, vision_is_frozen
from povidgen.train.losses import dpo_loss, pair_mode_loss, povid_loss
from povidgen.train.reference import (
    ReferenceCache,
    model_fingerprint,
    score_reference,
)
from povidgen.train.run_folder import (
    CHECKPOINTS,
    METRICS_FILE,
    STATE_FILE,
    checkpoints,
    resume_key,
)
from povidgen.train.step import Scorer, Scores

__all__ = ["DPOTrainer", "TrainResult"]

logger = logging.getLogger("povidgen")

SAVE_MARKER = "povidgen-save.json"
"""Written into every :meth:`DPOTrainer.save` folder, so a later save may replace it."""
_KEEP_CHECKPOINTS = 2


@dataclass
class TrainResult:
    """What :meth:`DPOTrainer.train` returns.

    Attributes:
        global_step: optimiser steps done in all (resumed runs included).
        metrics: one dict per logged step, as written to ``metrics.jsonl``.
        stopped: the run ended early because ``stop()`` said so (a checkpoint was written).
    """

    global_step: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    stopped: bool = False


class _Policy(nn.Module):
    """The policy forward as one module, so that DDP sees (and syncs) it."""

    def __init__(self, model: nn.Module, scorer: Scorer) -> None:
        super().__init__()
        self.model = model
        self.scorer = scorer

    def forward(
        self,
        batch: PreferenceBatch,
        features: list[Tensor] | None,
        noisy_features: list[Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        scores = self.scorer.score(
            self.model, batch, features=features, noisy_features=noisy_features
        )
        # copies, not views of one (B, 2) tensor: FSDP2 hooks the outputs of its root's
        # forward for backward, and a view output can lose that hook
        noisy = None if scores.noisy is None else scores.noisy.clone()
        return scores.chosen.clone(), scores.rejected.clone(), noisy


def _column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    if isinstance(dataset, Sequence) and dataset and isinstance(dataset[0], dict):
        return list(dataset[0].keys())
    raise TrainingDataError(
        f"train_dataset must be a datasets.Dataset or a list of dicts, got {type(dataset).__name__}"
    )


class DPOTrainer:
    """DPO / POVID training of a Hugging Face image-text-to-text model.

    Args:
        model: a transformers VLM of a supported family (see
            :data:`povidgen.train.families.FAMILIES`), or a PEFT model around one. Unless
            ``config.full``, a LoRA adapter is added on every linear layer of its language model.
        processor: the model's processor, with a chat template.
        train_dataset: rows in TRL's vision preference format (what ``povidgen build`` writes):
            a ``datasets.Dataset`` or a list of dicts.
        config: a :class:`DPOConfig`.
        ref_model: the reference for ``ref="copy"`` (default: a frozen copy of ``model``).
        output_dir: where metrics and checkpoints go (nothing is written without it).
        distorter: a :class:`povidgen.Distorter` instance that overrides ``config.distorter``.

    Raises:
        UnsupportedModelError: for a model family without an adapter.
        TrainingDataError: for a dataset that lacks a column the mode needs.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        train_dataset: Any,
        config: DPOConfig | None = None,
        *,
        ref_model: nn.Module | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        distorter: Any = None,
    ) -> None:
        self.config = config or DPOConfig()
        cfg = self.config
        self.family = family_of(model)
        self.processor = processor
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.rank, self.world_size = _distributed()
        _seed_everything(cfg.seed)

        if distorter is None:
            distorter = _make_distorter(cfg, _column_names(train_dataset))
        missing = [
            c
            for c in required_columns(cfg.mode, distorter is not None)
            if c not in _column_names(train_dataset)
        ]
        if missing:
            raise TrainingDataError(
                f"mode {cfg.mode!r} needs the column(s) {missing}; the dataset has "
                f"{_column_names(train_dataset)}"
                + (
                    " (give a distorter, e.g. --distorter diffusion, to make rejected images)"
                    if "rejected_images" in missing
                    else ""
                )
            )
        if len(train_dataset) == 0:
            raise TrainingDataError("the training dataset has no rows")
        self.dataset = train_dataset
        self.distorter = distorter

        strategy = cfg.reference
        self._fingerprint = model_fingerprint(model) if strategy == "precomputed" else ""
        self.ref_model: nn.Module | None = None
        if strategy == "copy":
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.requires_grad_(False).eval()
        dtype = getattr(unwrap_model(model), "dtype", torch.float32)
        # a half-precision model keeps peft's fp32 adapters under autocast (as TRL does), so
        # activations are saved in half precision, not as fp32 copies of every adapter input
        self._half = dtype if dtype in (torch.bfloat16, torch.float16) else None
        self.model = self._prepare_model(model)
        if strategy == "adapter" and not hasattr(unwrap_peft(self.model), "disable_adapter"):
            raise ValueError("ref='adapter' needs a LoRA adapter; use ref='copy' with full=True")

        tokenizer = getattr(processor, "tokenizer", processor)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", 0) or 0
        self.collator = PreferenceCollator(
            processor,
            self.family,
            mode=cfg.mode,
            distorter=distorter,
            seed=cfg.seed,
            max_length=cfg.max_length,
        )
        self.scorer = Scorer(
            self.family,
            mode=cfg.mode,
            packing=cfg.packing,
            padding_free=cfg.padding_free,
            chunk_size=cfg.chunk_size,
            overlap=cfg.overlap,
            pad_token_id=int(pad),
        )
        self.policy: nn.Module = _Policy(self.model, self.scorer)
        self.sharded = self.world_size > 1 and cfg.distributed == "fsdp"
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            for layer in getattr(self.family.decoder(self.model), "layers", []):
                fully_shard(layer)
            fully_shard(self.policy)
        elif self.world_size > 1:
            self.policy = torch.nn.parallel.DistributedDataParallel(self.policy)
        self.device = next(self.model.parameters()).device
        # a frozen vision tower gives the policy and the reference the same image features
        self._share_vision = vision_is_frozen(self.model, self.family)
        self.global_step = 0
        self.consumed = 0  # micro-batches consumed, over all epochs
        self._updated = False  # whether an optimiser step has changed the weights
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.cache: ReferenceCache | None = None
        self._writers: list[Any] = []

    # -- set-up ---------------------------------------------------------------------------

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        cfg = self.config
        if cfg.full:
            model.requires_grad_(True)
        elif not _is_peft_model(model):
            from peft import LoraConfig, get_peft_model

            decoder = self.family.decoder(model)
            prefix = _module_name(unwrap_model(model), decoder)
            targets = [
                f"{prefix}.{name}"
                for name, module in decoder.named_modules()
                if isinstance(module, nn.Linear)
            ]
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                bias="none",
            )
            with warnings.catch_warnings():
                # peft reads transformers' deprecated is_gradient_checkpointing property
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
                )
                model = get_peft_model(model, lora)
        if cfg.gradient_checkpointing:
            inner = unwrap_model(model)
            kwargs = {"use_reentrant": False}
            if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.2x
                inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            enable = getattr(model, "enable_input_require_grads", None)
            if enable is not None:
                enable()
        model.train()
        return model

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def _steps_per_epoch(self) -> int:
        cfg = self.config
        global_batch = cfg.batch_size * self.world_size
        micro = len(self.dataset) // global_batch
        if micro == 0:
            raise TrainingDataError(
                f"the dataset has {len(self.dataset)} rows, fewer than one global batch of "
                f"{global_batch} (batch_size x processes)"
            )
        return micro

    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        cfg = self.config
        if cfg.max_steps is not None:
            return cfg.max_steps
        return max(1, math.ceil(cfg.epochs * self._steps_per_epoch() / cfg.grad_accum))

    def _make_optimizer(self) -> None:
        cfg = self.config
        params = self.trainable_parameters()
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            weight_decay=cfg.weight_decay,
        )
        total = self.total_steps()
        warmup = math.ceil(cfg.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if cfg.lr_scheduler == "constant":
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            if cfg.lr_scheduler == "linear":
                return max(0.0, 1.0 - progress)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # -- data -----------------------------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def _micro_batches(self, start: int) -> Iterator[PreferenceBatch]:
        """Micro-batches from the ``start``-th on (over epochs), this rank's slice of each."""
        cfg = self.config
        per_epoch = self._steps_per_epoch()
        global_batch = cfg.batch_size * self.world_size
        position = start
        while True:
            epoch, index = divmod(position, per_epoch)
            order = self._order(epoch)
            batches = []
            for i in range(index, per_epoch):
                chunk = order[i * global_batch : (i + 1) * global_batch]
                batches.append(chunk[self.rank * cfg.batch_size : (self.rank + 1) * cfg.batch_size])
            loader = torch.utils.data.DataLoader(
                _Rows(self.dataset),
                batch_sampler=batches,
                collate_fn=self.collator,
                num_workers=cfg.num_workers,
                # its own generator: making an iterator would otherwise draw from the global
                # RNG, and a resumed run makes its iterators at other points
                generator=torch.Generator().manual_seed(cfg.seed + epoch),
            )
            for batch in loader:
                yield batch
                position += 1

    # -- one step -------------------------------------------------------------------------

    def compute_loss(self, batch: PreferenceBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one micro-batch and its per-pair metric tensors (TRL's names)."""
        with self._autocast():
            return self._compute_loss(batch)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._half is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._half)

    def _compute_loss(self, batch: PreferenceBatch) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        batch = batch.to(self.device)
        self._unshard()
        features = noisy_features = None
        if self._share_vision and self.scorer.uses_packing(self.model):
            # one vision pass per image, shared by the policy and the reference
            with torch.no_grad():
                features = self.scorer.features(self.model, batch.vision)
                if batch.noisy_vision is not None:
                    noisy_features = self.scorer.features(self.model, batch.noisy_vision)
        chosen, rejected, noisy = self.policy(batch, features, noisy_features)
        policy = Scores(chosen, rejected, noisy, *batch.response_lengths())
        self._unshard()
        ref = self.reference_scores(batch, features, noisy_features)
        metrics: dict[str, Tensor] = {
            "logps/chosen": policy.chosen.detach(),
            "logps/rejected": policy.rejected.detach(),
        }
        if cfg.mode == "auto":
            assert policy.noisy is not None
            assert ref.noisy is not None
            has_text, has_image = batch.contrast_masks()
            out = pair_mode_loss(
                policy.chosen,
                policy.rejected,
                policy.noisy,
                ref.chosen,
                ref.rejected,
                ref.noisy,
                has_text=has_text,
                has_image=has_image,
                beta=cfg.beta,
                combine=cfg.povid_combine,
                weights=cfg.povid_weights,
            )
            metrics["logps/noisy"] = policy.noisy.detach()
            metrics["rewards/noisy"] = out.noisy_rewards
        elif cfg.mode == "povid":
            assert policy.noisy is not None
            assert ref.noisy is not None
            out = povid_loss(
                policy.chosen,
                policy.rejected,
                policy.noisy,
                ref.chosen,
                ref.rejected,
                ref.noisy,
                beta=cfg.beta,
                combine=cfg.povid_combine,
                weights=cfg.povid_weights,
            )
            metrics["logps/noisy"] = policy.noisy.detach()
            metrics["rewards/noisy"] = out.noisy_rewards
        else:
            out = dpo_loss(  # type: ignore[assignment]
                policy.chosen,
                policy.rejected,
                ref.chosen,
                ref.rejected,
                loss_type=cfg.loss_types,
                loss_weights=cfg.loss_weights,
                beta=cfg.beta,
                label_smoothing=cfg.label_smoothing,
                chosen_lengths=policy.chosen_lengths,
                rejected_lengths=policy.rejected_lengths,
            )
        metrics.update(
            {
                "rewards/chosen": out.chosen_rewards,
                "rewards/rejected": out.rejected_rewards,
                "rewards/margins": out.margins,
                "rewards/accuracies": out.accuracies,
            }
        )
        loss = out.loss
        if cfg.rpo_alpha > 0:
            # TRL's rpo_alpha: the chosen answers' NLL, a mean over all their tokens in the batch
            tokens = policy.chosen_lengths.sum().clamp(min=1)
            loss = loss + cfg.rpo_alpha * -(policy.chosen.sum() / tokens)
            metrics["nll/chosen"] = -(policy.chosen.detach() / policy.chosen_lengths.clamp(min=1))
        return loss, metrics

    def _unshard(self) -> None:
        """With FSDP2: gather the root's parameters (vision tower, embeddings, LM head), which
        the shared vision features and the reference use outside the policy's forward."""
        if self.sharded:
            self.policy.unshard()  # type: ignore[operator]

    def training_step(self, batches: Sequence[PreferenceBatch]) -> dict[str, float]:
        """One optimiser step over ``batches`` (its micro-batches, usually ``grad_accum`` of
        them): forward and backward of each (the loss divided by their number), clip, AdamW
        step, scheduler step. Returns ``step``, ``loss``, ``learning_rate`` and the means of
        :meth:`compute_loss`'s metrics (averaged across processes)."""
        if self.optimizer is None or self.scheduler is None:
            self._make_optimizer()
        assert self.optimizer is not None
        assert self.scheduler is not None
        sums: dict[str, float] = {}
        loss_sum = 0.0
        for batch in batches:
            loss, metrics = self.compute_loss(batch)
            (loss / len(batches)).backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach()) / len(batches)
            for name, values in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(values.float().mean()) / len(batches)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.config.max_grad_norm)
        learning_rate = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self._updated = True
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return {
            "step": float(self.global_step),
            "loss": _mean_across_ranks(loss_sum),
            "learning_rate": learning_rate,
            **{k: _mean_across_ranks(v) for k, v in sums.items()},
        }

    def reference_scores(
        self,
        batch: PreferenceBatch,
        features: list[Tensor] | None = None,
        noisy_features: list[Tensor] | None = None,
    ) -> Scores:
        """The reference's scores of ``batch`` (see :mod:`povidgen.train.reference`)."""
        with self._autocast():
            return self._reference_scores(batch, features, noisy_features)

    def _reference_scores(
        self,
        batch: PreferenceBatch,
        features: list[Tensor] | None,
        noisy_features: list[Tensor] | None,
    ) -> Scores:
        if self.config.reference == "precomputed":
            cache = self._reference_cache()
            try:
                return cache.get(batch, self.device)
            except KeyError:
                scores = self._live_reference(batch, features, noisy_features)
                cache.put(batch, scores)
                return scores
        return self._live_reference(batch, features, noisy_features)

    def _live_reference(
        self,
        batch: PreferenceBatch,
        features: list[Tensor] | None,
        noisy_features: list[Tensor] | None,
    ) -> Scores:
        if self.config.reference == "precomputed" and self.config.full:
            if self._updated:
                raise TrainingDataError(
                    f"row {batch.ids[0]} has no precomputed reference log-probs and the fully "
                    "fine-tuned model can no longer give them; run precompute_reference() "
                    "before training"
                )
            # not trained yet: the model itself is still the reference
            with torch.no_grad():
                return self.scorer.score(
                    self.model, batch, features=features, noisy_features=noisy_features
                ).detach()
        return score_reference(
            self.scorer,
            self.model,
            batch,
            ref_model=self.ref_model,
            features=features,
            noisy_features=noisy_features,
        )

    def _reference_cache(self) -> ReferenceCache:
        if self.cache is None:
            cfg = self.config
            folder = cfg.ref_cache_dir or (
                str(self.output_dir / "ref_logps") if self.output_dir is not None else None
            )
            if folder is None:
                raise ValueError("ref='precomputed' needs ref_cache_dir or an output_dir")
            namespace = {
                "model": self._fingerprint,
                "mode": cfg.mode,
                "overlap": cfg.overlap,
                "max_length": cfg.max_length,
                "distorter": repr(self.distorter),
                "seed": cfg.seed,
            }
            self.cache = ReferenceCache(Path(folder) / "ref_logps.sqlite", namespace)
        return self.cache

    def precompute_reference(self) -> int:
        """Fill the reference cache for every row (``ref="precomputed"``); returns the number
        of rows computed (0 when all were cached)."""
        cache = self._reference_cache()
        computed = 0
        size = self.config.batch_size
        self.model.eval()
        for start in range(0, len(self.dataset), size):
            rows = [self.dataset[i] for i in range(start, min(start + size, len(self.dataset)))]
            batch = self.collator(rows).to(self.device)
            if not cache.missing(batch):
                continue
            with self._autocast():
                cache.put(batch, self._live_reference(batch, None, None))
            computed += len(batch)
        self.model.train()
        return computed

    # -- the loop -------------------------------------------------------------------------

    def train(
        self,
        *,
        resume: bool = False,
        progress: bool = False,
        stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Run the training loop.

        Args:
            resume: continue from the newest checkpoint in ``output_dir`` (an error if none).
            progress: show a tqdm bar (the CLI does; library callers usually don't).
            stop: asked after every optimiser step; when it returns ``True`` the trainer
                writes a checkpoint and returns (``TrainResult.stopped``), so that a resumed
                run continues exactly where this one stopped (the CLI's Ctrl-C).
        """
        cfg = self.config
        self._make_optimizer()
        assert self.optimizer is not None
        assert self.scheduler is not None
        if resume:
            self._load_checkpoint()
            self._updated = self.global_step > 0
        if cfg.reference == "precomputed" and self.global_step == 0:
            computed = self.precompute_reference()
            logger.info("reference log-probs: %d rows computed, the rest cached", computed)
        total = self.total_steps()
        result = TrainResult(self.global_step)
        self._open_writers()
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.global_step, desc="training", unit="step")
        batches = self._micro_batches(self.consumed)
        try:
            while self.global_step < total:
                started = time.perf_counter()
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                micro = [next(batches) for _ in range(cfg.grad_accum)]
                self.consumed += len(micro)
                record = self.training_step(micro)
                elapsed = max(time.perf_counter() - started, 1e-9)
                record["epoch"] = self.consumed / self._steps_per_epoch()
                record["pairs_per_second"] = sum(len(b) for b in micro) * self.world_size / elapsed
                record["tokens_per_second"] = (
                    sum(_token_count(b) for b in micro) * self.world_size / elapsed
                )
                record["peak_memory_gib"] = _peak_memory_gib(self.device)
                if self.global_step % cfg.logging_steps == 0 or self.global_step == total:
                    result.metrics.append(record)
                    self._log(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                if cfg.save_steps and self.global_step % cfg.save_steps == 0:
                    self.save_checkpoint()
                if stop is not None and _any_rank(stop()) and self.global_step < total:
                    result.stopped = True
                    break
            if self.output_dir is not None and (
                not cfg.save_steps or self.global_step % cfg.save_steps != 0
            ):
                self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            for writer in self._writers:
                writer.close()
            self._writers = []
        result.global_step = self.global_step
        return result

    # -- logging --------------------------------------------------------------------------

    def _open_writers(self) -> None:
        if self.rank != 0 or self.output_dir is None:
            return
        for target in self.config.report_to:
            if target == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as error:
                    raise RuntimeError(
                        "report_to tensorboard needs the tensorboard package"
                    ) from error
                self._writers.append(_TensorBoard(SummaryWriter(str(self.output_dir / "runs"))))
            else:
                try:
                    import wandb  # type: ignore[import-not-found]
                except ImportError as error:
                    raise RuntimeError("report_to wandb needs the wandb package") from error
                self._writers.append(_WandB(wandb, self.config))

    def _log(self, record: dict[str, float]) -> None:
        if self.rank != 0:
            return
        logger.info("step %d: %s", int(record["step"]), json.dumps(record))
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        for writer in self._writers:
            writer.log(record, int(record["step"]))

    # -- checkpoints ----------------------------------------------------------------------

    def _trainable_state(self) -> dict[str, Tensor]:
        """The trainable weights as full CPU tensors (a collective under FSDP2)."""
        return {
            name: _full_tensor(p.detach()).cpu().clone()
            for name, p in self.model.named_parameters()
            if p.requires_grad
        }

    def _optimizer_state(self) -> dict[str, Any]:
        assert self.optimizer is not None
        if not self.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state: dict[str, Any] = get_optimizer_state_dict(
            self.policy, self.optimizer, options=options
        )
        return state

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` (atomically) and prune all but the newest two.

        Every process must call it (it gathers sharded weights); the files are written by the
        first, except each process's RNG state (``rng-R.pt``), so ``output_dir`` must be on a
        file system all processes share.
        """
        if self.output_dir is None:
            return None
        assert self.scheduler is not None
        weights = self._trainable_state()
        optimizer = self._optimizer_state()
        root = self.output_dir / CHECKPOINTS
        final = root / f"step-{self.global_step}"
        tmp = root / f".step-{self.global_step}.tmp"
        if self.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".step-*.tmp"):  # left by a run killed while saving
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        torch.save(_rng_state(), tmp / f"rng-{self.rank}.pt")
        if self.rank == 0:
            torch.save(weights, tmp / "trainable.pt")
            torch.save(optimizer, tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            state = {
                "global_step": self.global_step,
                "consumed": self.consumed,
                "world_size": self.world_size,
                "config": self.config.model_dump(mode="json"),
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        _barrier()
        if self.rank == 0:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in checkpoints(root)[:-_KEEP_CHECKPOINTS]:
                shutil.rmtree(old)
        _barrier()
        return final

    def _load_checkpoint(self) -> None:
        if self.output_dir is None:
            raise ValueError("resume needs an output_dir")
        found = checkpoints(self.output_dir / CHECKPOINTS)
        if not found:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.output_dir}")
        path = found[-1]
        assert self.optimizer is not None
        assert self.scheduler is not None
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        saved = DPOConfig.model_validate(state["config"])
        if resume_key(saved) != resume_key(self.config):
            raise ValueError(
                f"cannot resume from {path}: it was made with a different configuration"
            )
        if int(state.get("world_size", 1)) != self.world_size:
            raise ValueError(
                f"cannot resume from {path}: it was made by {state.get('world_size', 1)} "
                f"processes, this run has {self.world_size}"
            )
        weights = torch.load(path / "trainable.pt", map_location="cpu")
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name in weights:
                    _copy_full(p, weights[name])
        optimizer = torch.load(path / "optimizer.pt", map_location=self.device, weights_only=False)
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                self.policy,
                self.optimizer,
                optim_state_dict=optimizer,
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        _set_rng_state(torch.load(path / f"rng-{self.rank}.pt", weights_only=False))
        self.global_step = int(state["global_step"])
        self.consumed = int(state["consumed"])
        if self.rank == 0:
            _truncate_metrics(self.output_dir / METRICS_FILE, self.global_step)
        logger.info("resumed from %s (step %d)", path, self.global_step)

    # -- saving ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, merge: bool = False) -> Path:
        """Save the adapter (or the full model, or with ``merge=True`` the model with the
        adapter merged in) and the processor, loadable with ``from_pretrained``.

        The files are written to a staging folder beside ``path`` and moved into place, so
        ``path`` never mixes two saves (an old ``adapter_config.json`` beside merged weights
        would make ``from_pretrained`` load the old adapter). An existing ``path`` is replaced
        only if it is empty or an earlier :meth:`save` (it holds :data:`SAVE_MARKER`).

        Raises:
            FileExistsError: ``path`` exists and is not such a folder.
        """
        out = Path(path)
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise FileExistsError(f"{out} exists and is not a folder; not replacing it")
        if out.is_dir() and any(out.iterdir()) and not (out / SAVE_MARKER).is_file():
            raise FileExistsError(
                f"{out} is not empty and was not written by DPOTrainer.save; not replacing it"
            )
        model: Any = self.model
        extra: dict[str, Any] = {}
        if self.sharded:
            if merge:
                raise ValueError(
                    "merge=True is not available with FSDP: save the adapter, then merge it "
                    "in one process (PeftModel.from_pretrained(...).merge_and_unload())"
                )
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            extra["state_dict"] = get_model_state_dict(model, options=options)
            if not hasattr(model, "peft_config"):
                model = unwrap_model(model)
        elif merge and hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        if self.rank == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = out.with_name(f".{out.name}.saving")
            old = out.with_name(f".{out.name}.old")
            for leftover in (staging, old):
                shutil.rmtree(leftover, ignore_errors=True)
            model.save_pretrained(staging, **extra)
            self.processor.save_pretrained(staging)
            marker = {"merged": bool(merge), "global_step": self.global_step}
            (staging / SAVE_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
            if out.exists():
                os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return out

    def merged_model(self) -> nn.Module:
        """The trained model with its LoRA adapter merged in (the model itself when full)."""
        model: Any = self.model
        if hasattr(model, "merge_and_unload"):
            merged = model.merge_and_unload()
            assert isinstance(merged, nn.Module)
            return merged
        return self.model


# ---------------------------------------------------------------------------------------------


class _Rows(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.data[index]
        assert isinstance(row, dict)
        return row


class _TensorBoard:
    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def log(self, record: dict[str, float], step: int) -> None:
        for key, value in record.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, wandb: Any, config: DPOConfig) -> None:
        self.run = wandb.init(project="povidgen", config=config.model_dump(mode="json"))

    def log(self, record: dict[str, float], step: int) -> None:
        self.run.log(record, step=step)

    def close(self) -> None:
        self.run.finish()


def _is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def _module_name(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return str(name)
    raise ValueError("the decoder is not a submodule of the model")


def _make_distorter(cfg: DPOConfig, columns: list[str]) -> Any:
    if cfg.mode == "text":
        return None
    if cfg.distorter is None:
        if "rejected_images" in columns:
            return None
        if cfg.mode == "image":
            return None  # the missing column is reported by the caller
        from povidgen.distort.diffusion import DiffusionNoise

        return DiffusionNoise(step=500, **cfg.distorter_options)
    from povidgen.registry import get_distorter

    return get_distorter(cfg.distorter, **cfg.distorter_options)


def _token_count(batch: PreferenceBatch) -> int:
    prompts = sum(len(p) for p in batch.prompt_ids)
    return prompts + sum(
        len(c) + len(r) for c, r in zip(batch.chosen_ids, batch.rejected_ids, strict=False)
    )


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the records a killed run logged after its last checkpoint (they are redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a line cut by the kill: nothing after it is kept
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _full_tensor(tensor: Tensor) -> Tensor:
    """A sharded FSDP2 ``DTensor`` gathered in full (a collective); a plain tensor as it is."""
    gather = getattr(tensor, "full_tensor", None)
    return gather() if gather is not None else tensor


def _copy_full(param: Tensor, full: Tensor) -> None:
    """Copy a full tensor into ``param``, sharding it first when ``param`` is a ``DTensor``."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        full = distribute_tensor(
            full.to(param.device, param.dtype), param.device_mesh, param.placements
        )
    param.copy_(full)


def _any_rank(flag: bool) -> bool:
    """``flag`` on any rank (every rank must stop at the same step)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor([float(flag)])
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return bool(tensor.item() > 0)
    return flag


def _mean_across_ranks(value: float) -> float:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / torch.distributed.get_world_size()
    return value
