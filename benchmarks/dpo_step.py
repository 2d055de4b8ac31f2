"""One DPO optimiser step on a VLM: povidgen against TRL's DPOTrainer and the plain layout.

Run:  python benchmarks/dpo_step.py                          # tiny shape, CPU, ~15 s
      python benchmarks/dpo_step.py --mode text povid        # both modes
      python benchmarks/dpo_step.py --shape llava-1.5-7b --device cuda
      python benchmarks/dpo_step.py --shape qwen2-vl-7b --mode text povid --device cuda
      python benchmarks/dpo_step.py --shape llava-1.5-7b --layers 1 --pairs 2 --steps 1 \
          --warmup 0 --device cpu                            # the 7B shapes' plumbing, cut down

Every contender trains the same random-weight model (rebuilt from the same seed for each one,
never downloaded) with a LoRA adapter on every linear layer of the language model, whose weights
are then set to the same deterministic non-zero values in every contender (so that the policy
differs from the reference and the step-0 loss is not a trivial log 2), on the same batch of
synthetic pairs: random token ids around the image placeholder tokens, random pixel values
(the noisy image: half the clean pixels plus Gaussian noise). One step is what each trainer
does per optimiser step: forward, reference, loss, backward, gradient clipping (1.0), AdamW
step, scheduler step, zero_grad, and the trainer's own per-step metric read-back. Collation is
not timed (it is the same synthetic batch for everyone).

Contenders (``--mode text``):
  povidgen          povidgen.train.DPOTrainer, DPOConfig() defaults: packed layout (vision tower
                    once per pair and shared with the reference, ``[prompt | chosen | rejected]``
                    in one padding-free forward, LM head on response tokens only), no
                    checkpointing; the body of ``DPOTrainer.train``'s loop
  povidgen+ckpt     the same with gradient_checkpointing=True
  povidgen-plain    packing=False: the model's own forward on 2B right-padded rows
  povidgen+precomputed  ref="precomputed": the reference scores read from the on-disk cache
                    (filled once before the timed steps, as DPOTrainer.train does)
  trl               trl.DPOTrainer with its defaults (gradient checkpointing on, bf16 autocast
                    on a GPU, fused AdamW on a GPU, its fused LM head); its step is
                    ``training_step`` + clipping + optimizer and scheduler step, as in
                    ``Trainer._run_epoch``, after what ``Trainer.train`` sets up (checkpointing,
                    optimizer, ``accelerator.prepare``, scheduler)
  trl-no-ckpt       the same with gradient_checkpointing=False
Contenders (``--mode povid``, POVID stage 2, which TRL does not have):
  povidgen, povidgen+ckpt, povidgen+precomputed, povidgen-plain   DPOConfig(mode="povid")
  six-forward       the official layout, written out here: for the policy and for the reference
                    (adapter disabled), three forwards of B rows each (clean image + chosen,
                    clean image + rejected, noisy image + chosen) with full logits from
                    ``model(**inputs).logits``, fp32 log_softmax + gather, the noisy argmax
                    scored under the clean-chosen logits, the official mean of two sigmoid
                    losses; torch AdamW. The policy's noisy forward runs under no_grad (it only
                    feeds an argmax), which flatters this baseline.

Measured per contender: the step-0 loss and the step-0 mean policy log-prob of the chosen
answers (all contenders must agree on both; the run exits 1 when they do not or a contender
fails), median ms per optimiser step after ``--warmup`` steps, pairs/s, tokens/s (prompt +
chosen + rejected tokens of each pair, the same count for every contender), and memory. On
CUDA: peak ``torch.cuda.max_memory_allocated`` over all the contender's steps (weights
included: "peak") and that peak minus what was allocated before its first step ("step":
optimiser state, gradients, activations). On the CPU torch's allocator keeps no statistics and
tracemalloc does not see its buffers, so memory is the process's resident set: after
``malloc_trim`` the kernel's high-water mark (``VmHWM``) is reset through
``/proc/self/clear_refs``; "peak" is that mark (the whole process), "step" its growth over the
steps, an estimate (allocator caching, page granularity). Ratios are against TRL's defaults
(``--mode text``) or the six-forward layout (``--mode povid``), measured in the same run;
memory ratios are on "peak" on CUDA and on "step" on the CPU.

Shapes (``--pairs`` and ``--layers`` cut any of them down):
  tiny            LLaVA-style (CLIP tower, Llama decoder, 4.6M parameters) sized so that a CPU
                  step takes a fifth of a second: 4 pairs, 64 image + ~45 prompt + ~30 answer
                  tokens, LoRA r16/alpha32
  tiny-qwen2-vl   the same for Qwen2-VL (3-D RoPE positions, merged patches)
  llava-1.5-7b    CLIP ViT-L/14-336 + Llama-2-7B (7.06B parameters), LoRA r128/alpha256 on every
                  LM linear, 4 pairs, 576 image + ~45 prompt + ~120 answer tokens
  qwen2-vl-7b     Qwen2-VL-7B (8.29B parameters), LoRA r128/alpha256, 4 pairs, a 640x480 image
                  at Qwen2-VL's default resize (476x644: 391 tokens) + ~45 prompt + ~120 answer

On a GPU the 7B shapes are built directly on the device in bf16 (``--dtype``; ~15 GiB) and
rebuilt for each contender; with the default 1 warm-up and 3 timed steps a contender should
take 10-30 s on an H100/H200 (build included), one shape in both modes (9 contenders) a few
minutes; run the shapes as separate commands to stay inside a 10-minute limit. The issue's GPU
targets: povidgen >= 2x TRL's defaults in pairs/s at no more memory; >= 1.5x TRL without
checkpointing at <= half its memory; ``--mode povid`` >= 3x the six-forward layout. They are
printed met / not met for povidgen and povidgen+ckpt (on a CPU the verdicts are informational).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

GiB = 2**30
BETA = 0.1
IGNORE = -100
TEXT_CONTENDERS = (
    "povidgen",
    "povidgen+ckpt",
    "povidgen+precomputed",
    "povidgen-plain",
    "trl",
    "trl-no-ckpt",
)
POVID_CONTENDERS = (
    "povidgen",
    "povidgen+ckpt",
    "povidgen+precomputed",
    "povidgen-plain",
    "six-forward",
)
LORA_SCALE = 0.3
"""The LoRA product is set to this fraction of the base weights' init scale, so that the
policy and the reference differ at step 0."""

Step = Callable[[], tuple[float, float]]
"""One optimiser step; returns the loss and the mean policy log-prob of the chosen answers,
both of the batch as it was before the update."""


# -- shapes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenIds:
    """The ids the synthetic batch needs; ordinary text ids are drawn from ``[0, text_end)``."""

    vocab: int
    image: int
    pad: int
    text_end: int
    bos: int | None = None
    eos: int | None = None
    vision_start: int | None = None
    vision_end: int | None = None
    video: int | None = None


@dataclass(frozen=True)
class Shape:
    """A model and batch size.

    Attributes:
        family: ``"llava"`` or ``"qwen2_vl"``.
        text, vision: keyword arguments of the text and vision configs.
        image: LLaVA: ``(image_size, patch_size)``; Qwen2-VL: ``(grid_h, grid_w)`` in patches.
        prompt, answer: mean text tokens of the prompt (image tokens excluded) and of each
            answer; each pair draws within ``+- jitter``.
        ids: fixed token ids (the 7B shapes); ``None`` takes them from the tiny tokenizer.
    """

    name: str
    family: str
    text: dict[str, Any]
    vision: dict[str, Any]
    image: tuple[int, int]
    pairs: int
    prompt: int
    answer: int
    jitter: int
    lora_r: int
    lora_alpha: int
    warmup: int
    steps: int
    ids: TokenIds | None = None

    @property
    def image_tokens(self) -> int:
        if self.family == "llava":
            size, patch = self.image
            return (size // patch) ** 2
        return self.image[0] * self.image[1] // 4


_LLAMA_2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
_CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "projection_dim": 768,
}
_QWEN2_VL_7B_TEXT = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
_QWEN2_VL_7B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 3584,
    "mlp_ratio": 4,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
_TINY_TEXT = {
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
}

SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape(
            name="tiny",
            family="llava",
            text=_TINY_TEXT,
            vision={
                "hidden_size": 128,
                "intermediate_size": 512,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "projection_dim": 128,
            },
            image=(64, 8),
            pairs=4,
            prompt=45,
            answer=30,
            jitter=5,
            lora_r=16,
            lora_alpha=32,
            warmup=1,
            steps=5,
        ),
        Shape(
            name="tiny-qwen2-vl",
            family="qwen2_vl",
            text={
                **_TINY_TEXT,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 1e6,
                    "mrope_section": [16, 8, 8],
                },
            },
            vision={
                "depth": 2,
                "embed_dim": 128,
                "hidden_size": 256,
                "mlp_ratio": 4,
                "num_heads": 4,
                "patch_size": 8,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            image=(16, 16),
            pairs=4,
            prompt=45,
            answer=30,
            jitter=5,
            lora_r=16,
            lora_alpha=32,
            warmup=1,
            steps=5,
        ),
        Shape(
            name="llava-1.5-7b",
            family="llava",
            text=_LLAMA_2_7B,
            vision=_CLIP_L_336,
            image=(336, 14),
            pairs=4,
            prompt=45,
            answer=120,
            jitter=10,
            lora_r=128,
            lora_alpha=256,
            warmup=1,
            steps=3,
            ids=TokenIds(vocab=32064, image=32000, pad=32001, text_end=32000, bos=1, eos=2),
        ),
        Shape(
            name="qwen2-vl-7b",
            family="qwen2_vl",
            text=_QWEN2_VL_7B_TEXT,
            vision=_QWEN2_VL_7B_VISION,
            image=(34, 46),
            pairs=4,
            prompt=45,
            answer=120,
            jitter=10,
            lora_r=128,
            lora_alpha=256,
            warmup=1,
            steps=3,
            ids=TokenIds(
                vocab=152064,
                image=151655,
                pad=151643,
                eos=151645,
                text_end=151643,
                vision_start=151652,
                vision_end=151653,
                video=151656,
            ),
        ),
    )
}


def resized(shape: Shape, *, pairs: int | None, layers: int | None) -> Shape:
    """``shape`` with another number of pairs and/or at most ``layers`` layers per tower."""
    if pairs is not None:
        shape = dataclasses.replace(shape, pairs=pairs)
    if layers is not None:
        text = {**shape.text, "num_hidden_layers": min(layers, shape.text["num_hidden_layers"])}
        key = "depth" if "depth" in shape.vision else "num_hidden_layers"
        vision = {**shape.vision, key: min(layers, shape.vision[key])}
        shape = dataclasses.replace(shape, name=f"{shape.name}[{layers} layers]", text=text)
        shape = dataclasses.replace(shape, vision=vision)
    return shape


def tiny_processor(family: str) -> Any:
    """The tiny offline processor of ``family`` (its model is dropped)."""
    from povidgen.train.tiny import tiny_vlm

    _, processor = tiny_vlm(family)
    return processor


def token_ids(shape: Shape, processor: Any) -> TokenIds:
    """``shape.ids``, or the ids of the tiny processor's tokenizer."""
    if shape.ids is not None:
        return shape.ids
    tokenizer = processor.tokenizer
    specials = list(tokenizer.all_special_ids)
    if shape.family == "llava":
        image = tokenizer.convert_tokens_to_ids("<image>")
        return TokenIds(
            vocab=len(tokenizer),
            image=image,
            pad=tokenizer.pad_token_id,
            text_end=min(specials),
            bos=tokenizer.bos_token_id,
            eos=tokenizer.eos_token_id,
        )
    return TokenIds(
        vocab=len(tokenizer),
        image=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        pad=tokenizer.pad_token_id,
        eos=tokenizer.eos_token_id,
        text_end=min(specials),
        vision_start=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        video=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )


def model_config(shape: Shape, ids: TokenIds) -> Any:
    """The transformers config of ``shape``."""
    if shape.family == "llava":
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

        size, patch = shape.image
        return LlavaConfig(
            vision_config=CLIPVisionConfig(image_size=size, patch_size=patch, **shape.vision),
            text_config=LlamaConfig(
                vocab_size=ids.vocab,
                pad_token_id=ids.pad,
                bos_token_id=ids.bos,
                eos_token_id=ids.eos,
                tie_word_embeddings=False,
                **shape.text,
            ),
            image_token_index=ids.image,
            image_seq_length=shape.image_tokens,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            tie_word_embeddings=False,
        )
    from transformers import Qwen2VLConfig

    assert ids.vision_start is not None
    assert ids.vision_end is not None
    assert ids.video is not None
    return Qwen2VLConfig(
        text_config={
            **shape.text,
            "vocab_size": ids.vocab,
            "pad_token_id": ids.pad,
            "bos_token_id": ids.bos,
            "eos_token_id": ids.eos,
            "tie_word_embeddings": False,
        },
        vision_config=dict(shape.vision),
        image_token_id=ids.image,
        video_token_id=ids.video,
        vision_start_token_id=ids.vision_start,
        vision_end_token_id=ids.vision_end,
        tie_word_embeddings=False,
    )


def build_model(
    shape: Shape, ids: TokenIds, device: torch.device, dtype: torch.dtype, seed: int
) -> nn.Module:
    """A random-weight model of ``shape``, created directly on ``device`` (same seed: same
    weights)."""
    from transformers import LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

    cls: Any = (
        LlavaForConditionalGeneration
        if shape.family == "llava"
        else Qwen2VLForConditionalGeneration
    )
    config = model_config(shape, ids)
    torch.manual_seed(seed)
    with torch.device(device):
        model: nn.Module = cls._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model


def lora_targets(model: nn.Module, family: str) -> list[str]:
    """Every linear layer of the language model, as povidgen's trainer picks them."""
    from povidgen.train.families import FAMILIES

    decoder = FAMILIES[family].decoder(model)
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    return [
        f"{prefix}.{name}"
        for name, module in decoder.named_modules()
        if isinstance(module, nn.Linear)
    ]


@torch.no_grad()
def set_lora(model: nn.Module, seed: int) -> int:
    """Give every LoRA layer of ``model`` the same non-zero weights whatever built it: each
    matrix is drawn from a generator seeded by its module name (PEFT's wrapper prefix
    dropped), on the weight's own device. Returns the number of LoRA parameters."""
    count = 0
    for name, module in model.named_modules():
        layer: Any = module
        lora_a = getattr(layer, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or "default" not in lora_a:
            continue
        a: Tensor = layer.lora_A["default"].weight
        b: Tensor = layer.lora_B["default"].weight
        scaling = float(layer.scaling["default"])
        rank, fan_in = a.shape
        key = name.split("base_model.model.", 1)[-1]
        generator = torch.Generator(device=a.device).manual_seed(seed + zlib.crc32(key.encode()))
        init_std = 0.02  # transformers' initializer_range for both families
        b_std = LORA_SCALE * init_std * math.sqrt(fan_in) / (scaling * math.sqrt(rank))
        a.copy_(torch.randn(a.shape, generator=generator, device=a.device) / math.sqrt(fan_in))
        b.copy_(torch.randn(b.shape, generator=generator, device=b.device) * b_std)
        count += a.numel() + b.numel()
    if count == 0:
        raise RuntimeError("the model has no LoRA layers")
    return count


# -- the batch --------------------------------------------------------------------------------


@dataclass
class Pairs:
    """The synthetic pairs, unpadded, on the CPU."""

    prompts: list[Tensor]
    chosen: list[Tensor]
    rejected: list[Tensor]
    vision: list[dict[str, Tensor]]
    noisy_vision: list[dict[str, Tensor]]
    mm_types: list[Tensor] | None

    @property
    def tokens(self) -> int:
        """Prompt + chosen + rejected tokens of all pairs."""
        return sum(
            len(p) + len(c) + len(r)
            for p, c, r in zip(self.prompts, self.chosen, self.rejected, strict=True)
        )


def make_pairs(shape: Shape, ids: TokenIds, seed: int) -> Pairs:
    """``shape.pairs`` random pairs around one image each (clean and noisy pixels)."""
    g = torch.Generator().manual_seed(seed)

    def text(n: int) -> Tensor:
        return torch.randint(3, ids.text_end, (n,), generator=g)

    def jittered(mean: int) -> int:
        return mean + int(torch.randint(-shape.jitter, shape.jitter + 1, (1,), generator=g))

    image = torch.full((shape.image_tokens,), ids.image, dtype=torch.long)
    prompts, chosen, rejected, vision, noisy = [], [], [], [], []
    for _ in range(shape.pairs):
        n = jittered(shape.prompt)
        if shape.family == "llava":
            assert ids.bos is not None
            parts = [torch.tensor([ids.bos]), text(3), image, text(n - 4)]
            pixels = torch.randn(1, 3, shape.image[0], shape.image[0], generator=g)
            noisy_pixels = 0.5 * pixels + torch.randn(pixels.shape, generator=g)
            rows = [{"pixel_values": pixels}, {"pixel_values": noisy_pixels}]
        else:
            assert ids.vision_start is not None
            assert ids.vision_end is not None
            h, w = shape.image
            start, end = torch.tensor([ids.vision_start]), torch.tensor([ids.vision_end])
            parts = [text(3), start, image, end, text(n - 5)]
            v = shape.vision
            width = 3 * v["temporal_patch_size"] * v["patch_size"] ** 2
            pixels = torch.randn(h * w, width, generator=g)
            grid = torch.tensor([[1, h, w]])
            rows = [
                {"pixel_values": pixels, "image_grid_thw": grid},
                {
                    "pixel_values": 0.5 * pixels + torch.randn(pixels.shape, generator=g),
                    "image_grid_thw": grid,
                },
            ]
        prompts.append(torch.cat(parts))
        chosen.append(text(jittered(shape.answer)))
        rejected.append(text(jittered(shape.answer)))
        vision.append(rows[0])
        noisy.append(rows[1])
    mm_types = None
    if shape.family == "qwen2_vl":
        mm_types = [(p == ids.image).long() for p in prompts]
    return Pairs(prompts, chosen, rejected, vision, noisy, mm_types)


def preference_batch(pairs: Pairs, device: torch.device) -> Any:
    """povidgen's :class:`PreferenceBatch` of ``pairs``."""
    from povidgen.train.collate import PreferenceBatch
    from povidgen.train.families import cat_vision

    n = len(pairs.prompts)
    batch = PreferenceBatch(
        ids=[f"pair-{i}" for i in range(n)],
        prompt_ids=list(pairs.prompts),
        chosen_ids=list(pairs.chosen),
        rejected_ids=list(pairs.rejected),
        vision=cat_vision(pairs.vision),
        vision_rows=list(pairs.vision),
        mm_token_type_ids=pairs.mm_types,
        noisy_prompt_ids=list(pairs.prompts),
        noisy_vision=cat_vision(pairs.noisy_vision),
        noisy_vision_rows=list(pairs.noisy_vision),
        noisy_mm_token_type_ids=pairs.mm_types,
        keys=[f"key-{i}" for i in range(n)],
    )
    return batch.to(device)


def padded_rows(
    prompts: Sequence[Tensor],
    responses: Sequence[Tensor],
    vision: Sequence[dict[str, Tensor]],
    types: Sequence[Tensor] | None,
    pad: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Right-padded ``[prompt | response]`` rows with their vision inputs, the layout of TRL's
    ``DataCollatorForVisionPreference`` (left-padded prompts flushed left): ``input_ids``,
    ``attention_mask``, vision keys, Qwen's ``mm_token_type_ids`` and ``completion_mask``."""
    from povidgen.train.families import cat_vision

    length = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    n = len(prompts)
    input_ids = torch.full((n, length), pad, dtype=torch.long)
    attention = torch.zeros(n, length, dtype=torch.long)
    completion = torch.zeros(n, length, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        input_ids[i, : len(p) + len(r)] = torch.cat([p, r])
        attention[i, : len(p) + len(r)] = 1
        completion[i, len(p) : len(p) + len(r)] = 1
    out: dict[str, Tensor] = {
        "input_ids": input_ids,
        "attention_mask": attention,
        **cat_vision(list(vision)),
    }
    if types is not None:
        mm_types = torch.zeros(n, length, dtype=torch.long)
        for i, t in enumerate(types):
            mm_types[i, : len(t)] = t
        out["mm_token_type_ids"] = mm_types
    out["completion_mask"] = completion
    return {k: v.to(device) for k, v in out.items()}


# -- measuring --------------------------------------------------------------------------------


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemoryMeter:
    """Peak memory of a stretch of work: CUDA allocator statistics, or on the CPU the
    resident set's high-water mark (reset through ``/proc/self/clear_refs``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.base = -1
            return
        self.base = _proc_status("VmRSS") or -1

    def stop(self) -> tuple[float, float]:
        """``(peak, peak - start)`` in bytes (NaN where unknown)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return float(peak), float(peak - self.base)
        hwm = _proc_status("VmHWM")
        if hwm is None or self.base < 0:
            return math.nan, math.nan
        return float(hwm), float(hwm - self.base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free what the last contender left behind."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        _malloc_trim()


@dataclass
class Result:
    name: str
    loss: float
    chosen_logps: float
    ms: float
    pairs_per_s: float
    tokens_per_s: float
    peak: float
    step: float


def measure(
    name: str,
    make: Callable[[], contextlib.AbstractContextManager[Step]],
    *,
    device: torch.device,
    warmup: int,
    steps: int,
    pairs: int,
    tokens: int,
) -> Result:
    """Build a contender, run ``warmup + steps`` optimiser steps, and free it."""
    release(device)
    if device.type == "cuda" and torch.cuda.memory_allocated(device) > GiB // 4:
        left = torch.cuda.memory_allocated(device) / GiB
        print(f"  note: {left:.2f} GiB still allocated before {name} (counted in its peak)")
    meter = MemoryMeter(device)
    times: list[float] = []
    first: tuple[float, float] | None = None
    with make() as step:
        meter.start()
        for i in range(warmup + steps):
            _sync(device)
            started = time.perf_counter()
            values = step()
            if first is None:
                first = values
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - started)
        peak, grown = meter.stop()
        del step  # the closure holds the model
    release(device)
    assert first is not None
    seconds = statistics.median(times)
    return Result(
        name=name,
        loss=first[0],
        chosen_logps=first[1],
        ms=seconds * 1e3,
        pairs_per_s=pairs / seconds,
        tokens_per_s=tokens / seconds,
        peak=peak,
        step=grown,
    )


# -- contenders -------------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything the contenders share for one shape and mode."""

    shape: Shape
    mode: str
    device: torch.device
    dtype: torch.dtype
    seed: int
    processor: Any
    ids: TokenIds
    pairs: Pairs
    total_steps: int

    def model(self) -> nn.Module:
        return build_model(self.shape, self.ids, self.device, self.dtype, self.seed)

    def rows(self) -> list[dict[str, Any]]:
        """One preference row in TRL's format: what the trainers' constructors inspect (the
        steps themselves run on the synthetic batch)."""
        from povidgen.train.tiny import tiny_image

        def message(role: str, text: str, image: bool = False) -> list[dict[str, Any]]:
            content: list[dict[str, Any]] = [{"type": "image"}] if image else []
            content.append({"type": "text", "text": text})
            return [{"role": role, "content": content}]

        return [
            {
                "id": "row-0",
                "images": [tiny_image(0)],
                "prompt": message("user", "what do you see?", image=True),
                "chosen": message("assistant", "a red cat."),
                "rejected": message("assistant", "two blue dogs."),
            }
        ]


@contextlib.contextmanager
def _checkpointing_renames() -> Iterator[None]:
    with warnings.catch_warnings():
        # transformers 5 renamed gradient to activation checkpointing; peft 0.21 and TRL 1.16
        # still use the old names (is_gradient_checkpointing, gradient_checkpointing_enable /
        # _disable), which warn on every use
        warnings.filterwarnings(
            "ignore",
            message=r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated",
            category=FutureWarning,
        )
        yield


@contextlib.contextmanager
def povidgen_contender(
    bench: Bench, *, packing: bool, checkpointing: bool, precomputed: bool = False
) -> Iterator[Step]:
    """povidgen's DPOTrainer, one step as ``DPOTrainer.train`` takes it."""
    import tempfile

    from povidgen.train import DPOConfig, DPOTrainer

    shape = bench.shape
    config = DPOConfig(
        mode="povid" if bench.mode == "povid" else "text",
        packing=packing,
        gradient_checkpointing=checkpointing,
        lora_r=shape.lora_r,
        lora_alpha=shape.lora_alpha,
        max_steps=bench.total_steps,
        seed=bench.seed,
        ref="precomputed" if precomputed else None,
    )
    cache = tempfile.TemporaryDirectory(prefix="povidgen-ref-")
    if precomputed:
        config = config.model_copy(update={"ref_cache_dir": cache.name})
    with _checkpointing_renames():
        trainer = DPOTrainer(bench.model(), bench.processor, bench.rows(), config)
    set_lora(trainer.model, bench.seed)
    batch = preference_batch(bench.pairs, bench.device)
    if precomputed:  # the pass before training: the reference scores go to the cache
        trainer.reference_scores(batch)

    def step() -> tuple[float, float]:
        record = trainer.training_step([batch])  # what DPOTrainer.train runs per step
        return record["loss"], record["logps/chosen"]

    try:
        yield step
    finally:
        cache.cleanup()


@contextlib.contextmanager
def trl_contender(bench: Bench, *, checkpointing: bool) -> Iterator[Step]:
    """trl.DPOTrainer with its defaults; one step as ``Trainer._run_epoch`` takes it."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl.trainer.dpo_config import DPOConfig as TRLConfig
    from trl.trainer.dpo_trainer import DPOTrainer as TRLTrainer

    shape = bench.shape
    cuda = bench.device.type == "cuda"
    model: Any = bench.model()
    with tempfile.TemporaryDirectory(prefix="dpo-step-trl-") as output_dir:
        args = TRLConfig(
            output_dir=output_dir,
            report_to="none",
            per_device_train_batch_size=shape.pairs,
            max_steps=bench.total_steps,
            # TRL's default is gradient_checkpointing=True; transformers 5 renamed it
            activation_checkpointing=checkpointing,
            # TRL's default is bf16 autocast on a GPU; follow the model's dtype so that every
            # contender computes in the same precision (the same as TRL's default for bf16)
            bf16=cuda and bench.dtype == torch.bfloat16,
            use_cpu=not cuda,
            seed=bench.seed,
            save_strategy="no",
            disable_tqdm=True,
        )
        lora = LoraConfig(
            r=shape.lora_r,
            lora_alpha=shape.lora_alpha,
            lora_dropout=0.0,
            target_modules=lora_targets(model, shape.family),
            bias="none",
        )
        with _checkpointing_renames():
            trainer: Any = TRLTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_list(bench.rows()),
                processing_class=bench.processor,
                peft_config=lora,
            )
        set_lora(trainer.model, bench.seed)
        # what Trainer.train() and _prepare_for_training do before the first step
        if args.activation_checkpointing:
            kwargs: dict[str, Any] = dict(args.activation_checkpointing_kwargs or {})  # type: ignore[arg-type]
            trainer.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=kwargs or None
            )
        trainer.create_optimizer()
        wrapped, optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
        trainer.model_wrapped = wrapped
        scheduler = trainer.create_scheduler(
            num_training_steps=bench.total_steps, optimizer=optimizer
        )
        trainer.current_gradient_accumulation_steps = 1
        pairs = bench.pairs
        types = None if pairs.mm_types is None else pairs.mm_types + pairs.mm_types
        inputs = padded_rows(
            pairs.prompts + pairs.prompts,
            pairs.chosen + pairs.rejected,
            pairs.vision + pairs.vision,
            types,
            bench.ids.pad,
            bench.device,
        )

        def step() -> tuple[float, float]:
            with _checkpointing_renames():
                loss = trainer.training_step(wrapped, dict(inputs))
            trainer.accelerator.clip_grad_norm_(wrapped.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            wrapped.zero_grad()
            logged = trainer._metrics["train"]["logps/chosen"]
            return float(loss), float(logged[-1]) if logged else math.nan

        yield step
        trainer.accelerator.free_memory()


@contextlib.contextmanager
def six_forward_contender(bench: Bench) -> Iterator[Step]:
    """The official POVID stage-2 layout: six full-logit forwards per step."""
    from peft import LoraConfig, get_peft_model

    shape = bench.shape
    base = bench.model()
    lora = LoraConfig(
        r=shape.lora_r,
        lora_alpha=shape.lora_alpha,
        lora_dropout=0.0,
        target_modules=lora_targets(base, shape.family),
        bias="none",
    )
    with _checkpointing_renames():
        model: Any = get_peft_model(base, lora)
    set_lora(model, bench.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    pairs, pad, device = bench.pairs, bench.ids.pad, bench.device
    types = pairs.mm_types
    chosen = padded_rows(pairs.prompts, pairs.chosen, pairs.vision, types, pad, device)
    rejected = padded_rows(pairs.prompts, pairs.rejected, pairs.vision, types, pad, device)
    noisy = padded_rows(pairs.prompts, pairs.chosen, pairs.noisy_vision, types, pad, device)

    def labels_of(rows: dict[str, Tensor]) -> Tensor:
        return rows["input_ids"].masked_fill(rows["completion_mask"] == 0, IGNORE)

    def logits_of(rows: dict[str, Tensor]) -> Tensor:
        inputs = {k: v for k, v in rows.items() if k != "completion_mask"}
        return model(**inputs, use_cache=False).logits  # type: ignore[no-any-return]

    def batch_logps(logits: Tensor, labels: Tensor) -> Tensor:
        labels = labels[:, 1:].clone()
        logits = logits[:, :-1].float()
        mask = labels != IGNORE
        labels[~mask] = 0
        per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
        return (per_token * mask).sum(-1)

    def noisy_labels(noisy_logits: Tensor, labels: Tensor) -> Tensor:
        out = labels.clone()
        mask = labels[:, 1:] != IGNORE
        out[:, 1:][mask] = noisy_logits[:, :-1].argmax(-1)[mask]
        return out

    def three(with_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        with torch.set_grad_enabled(with_grad):
            clean_chosen = logits_of(chosen)
            chosen_logps = batch_logps(clean_chosen, labels_of(chosen))
            rejected_logps = batch_logps(logits_of(rejected), labels_of(rejected))
        with torch.no_grad():
            argmax = noisy_labels(logits_of(noisy), labels_of(chosen))
        with torch.set_grad_enabled(with_grad):
            noisy_logps = batch_logps(clean_chosen, argmax)
        return chosen_logps, rejected_logps, noisy_logps

    def step() -> tuple[float, float]:
        pc, pr, pn = three(True)
        with model.disable_adapter():
            rc, rr, rn = three(False)
        d_chosen = pc - rc
        noisy_loss = -nn.functional.logsigmoid(BETA * (d_chosen - (pn - rn)))
        text_loss = -nn.functional.logsigmoid(BETA * (d_chosen - (pr - rr)))
        loss = (0.5 * noisy_loss + 0.5 * text_loss).mean()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), float(pc.detach().mean())

    yield step


# -- reporting --------------------------------------------------------------------------------


def _fmt_mem(value: float, cuda: bool) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value / GiB:.2f}" if cuda else f"{value / 2**20:.0f}"


def memory_of(result: Result, cuda: bool) -> float:
    """The memory the ratios use: peak on CUDA, growth over the steps on the CPU."""
    return result.peak if cuda else result.step


def markdown_table(results: list[Result], baseline: str | None, cuda: bool) -> str:
    unit = "GiB" if cuda else "MiB"
    lines = [
        "| contender | step-0 loss | step-0 logp(chosen) | ms/step | pairs/s | tokens/s "
        f"| peak {unit} | step {unit} "
        f"| pairs/s vs {baseline or '-'} | memory vs {baseline or '-'} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r for r in results if r.name == baseline), None)
    for r in results:
        speed = memory = "-"
        if base is not None:
            speed = f"{r.pairs_per_s / base.pairs_per_s:.2f}x"
            mine, theirs = memory_of(r, cuda), memory_of(base, cuda)
            if theirs > 0 and not math.isnan(mine) and not math.isnan(theirs):
                memory = f"{mine / theirs:.2f}x"
        lines.append(
            f"| {r.name} | {r.loss:.6f} | {r.chosen_logps:.4f} | {r.ms:.1f} | "
            f"{r.pairs_per_s:.2f} | {r.tokens_per_s:.0f} | "
            f"{_fmt_mem(r.peak, cuda)} | {_fmt_mem(r.step, cuda)} | "
            f"{speed} | {memory} |"
        )
    return "\n".join(lines)


def check_losses(results: list[Result], dtype: torch.dtype, mode: str) -> bool:
    """Print whether the step-0 losses and chosen log-probs agree; True when they do.

    The loss compares log-prob *ratios* to the reference, in which a token scored wrongly by
    both policy and reference nearly cancels; the policy's own chosen log-prob does not, so
    both are checked. In ``povid`` mode the noisy score takes an argmax over the vocabulary,
    and where the top two logits nearly tie (random weights, 32k-152k entries) the packed and
    padded layouts' rounding can pick different tokens: the loss tolerance is wider there.
    """
    exact = dtype == torch.float32
    tolerances = {
        "losses": (5e-4 if exact else 5e-2) if mode == "text" else (1e-2 if exact else 0.15),
        "chosen log-probs": 1e-4 if exact else 5e-3,
    }
    agree = True
    for what, values in (
        ("losses", [r.loss for r in results]),
        ("chosen log-probs", [r.chosen_logps for r in results]),
    ):
        tolerance = tolerances[what]
        spread = max(values) - min(values)
        scale = max(1.0, max(abs(v) for v in values))
        ok = all(math.isfinite(v) for v in values) and spread <= tolerance * scale
        listing = ", ".join(f"{r.name} {v:.6g}" for r, v in zip(results, values, strict=True))
        print(
            f"step-0 {what} {'agree' if ok else 'DISAGREE'} (spread {spread:.2e}, tolerance "
            f"{tolerance:g} x max(1, |value|)): {listing}"
        )
        agree &= ok
    return agree


def targets(results: list[Result], mode: str, cuda: bool) -> list[str]:
    """The issue's targets, met or not, for each povidgen variant measured."""
    by_name = {r.name: r for r in results}
    ours = [
        by_name[n] for n in ("povidgen", "povidgen+ckpt", "povidgen+precomputed") if n in by_name
    ]
    goals: list[tuple[str, str, float, float | None]] = []
    if mode == "text":
        goals = [
            ("trl", ">= 2x TRL's defaults in pairs/s at no more memory", 2.0, 1.0),
            ("trl-no-ckpt", ">= 1.5x TRL without checkpointing at <= half its memory", 1.5, 0.5),
        ]
    else:
        goals = [("six-forward", ">= 3x the official six-forward layout in pairs/s", 3.0, None)]
    lines = []
    for baseline, text, speed_goal, memory_goal in goals:
        base = by_name.get(baseline)
        if base is None or not ours:
            lines.append(f"- {text}: not measured")
            continue
        verdicts = []
        for r in ours:
            speed = r.pairs_per_s / base.pairs_per_s
            theirs = memory_of(base, cuda)
            memory = memory_of(r, cuda) / theirs if theirs > 0 else math.nan
            verdict = "met" if speed >= speed_goal else "not met"
            if memory_goal is not None and verdict == "met":
                if math.isnan(memory):
                    verdict = "memory unknown"
                elif memory > memory_goal:
                    verdict = "not met"
            verdicts.append(f"{r.name} {speed:.2f}x pairs/s, {memory:.2f}x memory: {verdict}")
        lines.append(f"- {text}: " + "; ".join(verdicts))
    return lines


# -- main -------------------------------------------------------------------------------------


def run(
    shape: Shape,
    mode: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    steps: int,
    only: Sequence[str] | None,
    seed: int,
) -> bool:
    """Measure every contender of ``mode`` on ``shape``; print the table. True when every
    contender ran and their step-0 losses agree."""
    processor = tiny_processor(shape.family)
    ids = token_ids(shape, processor)
    pairs = make_pairs(shape, ids, seed)
    bench = Bench(shape, mode, device, dtype, seed, processor, ids, pairs, warmup + steps)
    names = list(TEXT_CONTENDERS if mode == "text" else POVID_CONTENDERS)
    if only:
        names = [n for n in names if n in only]
    try:
        import trl  # noqa: F401
    except ImportError:
        if any(n.startswith("trl") for n in names):
            print("trl is not installed: the TRL contenders are skipped (pip install trl)")
        names = [n for n in names if not n.startswith("trl")]
    makers: dict[str, Callable[[], contextlib.AbstractContextManager[Step]]] = {
        "povidgen": lambda: povidgen_contender(bench, packing=True, checkpointing=False),
        "povidgen+ckpt": lambda: povidgen_contender(bench, packing=True, checkpointing=True),
        "povidgen-plain": lambda: povidgen_contender(bench, packing=False, checkpointing=False),
        "povidgen+precomputed": lambda: povidgen_contender(
            bench, packing=True, checkpointing=False, precomputed=True
        ),
        "trl": lambda: trl_contender(bench, checkpointing=True),
        "trl-no-ckpt": lambda: trl_contender(bench, checkpointing=False),
        "six-forward": lambda: six_forward_contender(bench),
    }
    meta = build_model(shape, ids, torch.device("meta"), dtype, seed)
    size = sum(p.numel() for p in meta.parameters())
    del meta
    parameters = f"{size / 1e9:.2f}B" if size >= 1e9 else f"{size / 1e6:.1f}M"
    prompt = sum(len(p) for p in pairs.prompts) / len(pairs.prompts)
    answers = sum(len(c) + len(r) for c, r in zip(pairs.chosen, pairs.rejected, strict=True))
    print(
        f"\n## {shape.name}, --mode {mode}: {parameters} parameters, {shape.pairs} pairs, "
        f"prompt {prompt:.0f} tokens ({shape.image_tokens} image), answers "
        f"{answers / (2 * shape.pairs):.0f} tokens, LoRA r{shape.lora_r}/alpha{shape.lora_alpha}, "
        f"{warmup} warm-up + {steps} timed steps"
    )
    results = []
    failed = False
    for name in names:
        started = time.perf_counter()
        try:
            result = measure(
                name,
                makers[name],
                device=device,
                warmup=warmup,
                steps=steps,
                pairs=shape.pairs,
                tokens=pairs.tokens,
            )
        except Exception as error:  # noqa: BLE001 - report it, measure the others, exit 1
            failed = True
            oom = isinstance(error, torch.OutOfMemoryError)
            print(f"  {name}: " + ("out of memory" if oom else f"FAILED: {error!r}"[:400]))
            if not oom:
                traceback.print_exc()
            release(device)
            continue
        results.append(result)
        print(
            f"  {name}: loss {result.loss:.6f}, {result.ms:.1f} ms/step "
            f"({time.perf_counter() - started:.1f} s with build)",
            flush=True,
        )
    if not results:
        return False
    cuda = device.type == "cuda"
    baseline = "six-forward" if mode == "povid" else "trl"
    if baseline not in names:
        baseline = "povidgen-plain" if "povidgen-plain" in names else names[0]
    print()
    print(markdown_table(results, baseline, cuda))
    print()
    memory = (
        "memory: torch.cuda.max_memory_allocated; peak = weights included, step = above what was "
        "allocated before the first step; ratios on peak"
        if cuda
        else "memory: process RSS high-water mark (VmHWM, reset after malloc_trim): peak = whole "
        "process, step = growth over the steps (an estimate); ratios on step"
    )
    print(memory)
    agree = check_losses(results, dtype, mode) and not failed
    print("targets" + ("" if cuda else " (GPU targets; informational on a CPU)") + ":")
    for line in targets(results, mode, cuda):
        print(line)
    return agree


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=["tiny"])
    parser.add_argument("--mode", nargs="+", choices=["text", "povid"], default=["text"])
    parser.add_argument("--steps", type=int, default=None, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before them")
    parser.add_argument("--device", default=None, help="default: cuda when there is one")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(set(TEXT_CONTENDERS + POVID_CONTENDERS)),
        default=None,
        help="run only these contenders",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=None, help="pairs per step (default: 4)")
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="cap the decoder's and the vision tower's depth (quick checks of a big shape)",
    )
    args = parser.parse_args(argv)
    if (args.pairs is not None and args.pairs < 1) or (args.layers is not None and args.layers < 1):
        parser.error("--pairs and --layers must be >= 1")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({name or 'CPU'}, {torch.get_num_threads()} threads); "
        f"dtype {dtype_name}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_version}; "
        f"python {sys.version.split()[0]}"
    )
    agree = True
    for shape_name in args.shape:
        shape = resized(SHAPES[shape_name], pairs=args.pairs, layers=args.layers)
        warmup = shape.warmup if args.warmup is None else args.warmup
        steps = shape.steps if args.steps is None else args.steps
        if steps < 1 or warmup < 0:
            parser.error("--steps must be >= 1 and --warmup >= 0")
        for mode in args.mode:
            agree &= run(
                shape,
                mode,
                device=device,
                dtype=dtype,
                warmup=warmup,
                steps=steps,
                only=args.only,
                seed=args.seed,
            )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
