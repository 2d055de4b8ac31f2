"""Per-family knowledge of Hugging Face vision-language models: the small part that differs.

The trainer runs the parts of a VLM separately so that the vision tower runs once per pair and
the prompt once for all responses (see :mod:`povidgen.train.step`). What it needs to know of a
model family is small, and :class:`FamilyAdapter` holds it:

* which processor outputs are vision inputs (``pixel_values``, ``image_sizes``,
  ``image_grid_thw``, ``pixel_attention_mask``...), to be passed to ``get_image_features``;
* the image placeholder token, whose positions receive the image features;
* the position ids of a prompt: plain ``0..P-1``, or the 3-D multimodal RoPE ids
  ``(3, P)`` of Qwen2-VL-style models (``get_rope_index``);
* the decoder (``model.model.language_model``) and the LM head (``model.lm_head``).

Image features come from ``model.model.get_image_features(**vision).pooler_output``, one
``(n_i, H)`` tensor per image, which transformers 5 gives every family below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from povidgen.errors import InputError

__all__ = ["FAMILIES", "FamilyAdapter", "UnsupportedModelError", "family_of", "unwrap_model"]


class UnsupportedModelError(InputError):
    """The model is of a family the trainer has no adapter for."""


@dataclass(frozen=True)
class FamilyAdapter:
    """How the trainer runs one family of image-text-to-text models.

    Attributes:
        name: the family's name, e.g. ``"llava"``.
        model_types: ``config.model_type`` values of this family.
        vision_keys: processor outputs that are vision inputs (all per image, concatenable
            along dim 0).
        mrope: the family uses 3-D multimodal RoPE positions from ``get_rope_index``.
        decoder_attr: the attribute of ``model.model`` that holds the language model.
    """

    name: str
    model_types: tuple[str, ...]
    vision_keys: tuple[str, ...]
    mrope: bool = False
    decoder_attr: str = "language_model"

    def vlm(self, model: nn.Module) -> Any:
        """The inner multimodal model (``model.model``): vision tower, projector, decoder."""
        return unwrap_model(model).model

    def decoder(self, model: nn.Module) -> nn.Module:
        """The language model that maps ``inputs_embeds`` to last hidden states."""
        decoder = getattr(self.vlm(model), self.decoder_attr)
        assert isinstance(decoder, nn.Module)
        return decoder

    def lm_head_weight(self, model: nn.Module) -> Tensor:
        """``(V, H)``, the output projection."""
        weight = unwrap_model(model).lm_head.weight
        assert isinstance(weight, Tensor)
        return weight

    def image_token_id(self, model: nn.Module) -> int:
        """The placeholder token that the processor repeats once per image feature."""
        config = unwrap_model(model).config
        token = getattr(config, "image_token_id", None)
        if token is None:
            token = getattr(config, "image_token_index", None)
        if token is None:
            raise UnsupportedModelError(f"{type(config).__name__} names no image token id")
        return int(token)

    def image_features(self, model: nn.Module, vision: dict[str, Tensor]) -> list[Tensor]:
        """One ``(n_i, H)`` tensor per image, in the order of ``vision``'s images."""
        inputs = {k: v for k, v in vision.items() if k in self.vision_keys}
        out = self.vlm(model).get_image_features(**inputs, return_dict=True)
        pooled = out.pooler_output
        features = list(pooled) if not isinstance(pooled, Tensor) else list(pooled.unbind(0))
        return [f.reshape(-1, f.shape[-1]) for f in features]

    def prompt_positions(
        self,
        model: nn.Module,
        prompt_ids: Tensor,
        vision_row: dict[str, Tensor],
        mm_token_type_ids: Tensor | None,
    ) -> Tensor | None:
        """``(3, P)`` multimodal RoPE ids of one prompt (one image), or ``None`` for 1-D ids."""
        if not self.mrope:
            return None
        if mm_token_type_ids is None:
            raise ValueError(
                f"{self.name} needs the processor's mm_token_type_ids for its 3-D positions"
            )
        positions, _ = self.vlm(model).get_rope_index(
            prompt_ids[None],
            mm_token_type_ids=mm_token_type_ids[None],
            image_grid_thw=vision_row.get("image_grid_thw"),
        )
        result = positions[:, 0]
        assert isinstance(result, Tensor)
        return result


FAMILIES: dict[str, FamilyAdapter] = {
    family.name: family
    for family in (
        FamilyAdapter("llava", ("llava",), ("pixel_values",)),
        FamilyAdapter("llava_next", ("llava_next",), ("pixel_values", "image_sizes")),
        FamilyAdapter("qwen2_vl", ("qwen2_vl",), ("pixel_values", "image_grid_thw"), mrope=True),
        FamilyAdapter(
            "qwen2_5_vl", ("qwen2_5_vl",), ("pixel_values", "image_grid_thw"), mrope=True
        ),
        FamilyAdapter(
            "idefics3",
            ("idefics3", "smolvlm"),
            ("pixel_values", "pixel_attention_mask"),
            decoder_attr="text_model",
        ),
    )
}
"""The families the trainer supports, by name."""


def unwrap_model(model: nn.Module) -> Any:
    """The transformers model under PEFT and DDP/FSDP wrappers."""
    inner: Any = model
    for _ in range(4):
        if hasattr(inner, "module") and isinstance(inner.module, nn.Module):
            inner = inner.module  # DistributedDataParallel
        elif hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()  # peft
        else:
            break
    return inner


def unwrap_peft(model: nn.Module) -> Any:
    """The PEFT model under DDP wrappers, or ``model`` itself when there is none."""
    inner: Any = model
    while hasattr(inner, "module") and not hasattr(inner, "disable_adapter"):
        inner = inner.module
    return inner


def family_of(model: nn.Module) -> FamilyAdapter:
    """The :class:`FamilyAdapter` for ``model`` (found by ``config.model_type``).

    Raises:
        UnsupportedModelError: naming the model type and listing the supported families.
    """
    config = getattr(unwrap_model(model), "config", None)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise UnsupportedModelError(
        f"povidgen.train has no adapter for model_type {model_type!r} "
        f"({type(unwrap_model(model)).__name__}); supported: {supported}"
    )


def vision_parameters(model: nn.Module, family: FamilyAdapter) -> list[nn.Parameter]:
    """Parameters of the vision tower and projector (everything in ``model.model`` that is not
    the language model)."""
    vlm = family.vlm(model)
    language = {id(p) for p in family.decoder(model).parameters()}
    return [p for p in vlm.parameters() if id(p) not in language]


def vision_is_frozen(model: nn.Module, family: FamilyAdapter) -> bool:
    """No vision parameter needs a gradient: its features can be shared with the reference."""
    return not any(p.requires_grad for p in vision_parameters(model, family))


def cat_vision(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate per-row vision inputs along dim 0, zero-padding the other dims to the
    largest row (LLaVA-NeXT's tiles and Idefics3's image splits differ per image; both models
    drop all-zero padding tiles)."""
    out: dict[str, Tensor] = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].ndim)]
        padded = []
        for t in tensors:
            pad: list[int] = []
            for d in reversed(range(1, t.ndim)):
                pad += [0, shape[d - 1] - t.shape[d]]
            padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
        out[key] = torch.cat(padded, dim=0)
    return out
