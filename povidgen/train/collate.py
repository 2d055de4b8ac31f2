"""Turning published preference rows into token ids and vision inputs, the way TRL does.

Rows are in TRL's vision preference format, as ``povidgen build`` writes them: ``images``
(a one-image list), ``prompt`` / ``chosen`` / ``rejected`` (lists of chat messages with typed
content), optional ``rejected_images`` and ``id``.

Tokenisation convention (the one of TRL 1.x's ``DataCollatorForVisionPreference``, so that
per-sequence log-probs agree with TRL's on the same model and rows):

1. ``prompt_text = apply_chat_template(prompt, add_generation_prompt=True)`` and
   ``full_text = apply_chat_template(prompt + chosen)`` (likewise for rejected); the prompt is
   the longest common character prefix of the three, and each response is the rest of its
   ``full_text`` (the answer, then whatever the template closes the turn with: ``</s>``,
   ``<|im_end|>\\n``, ``<end_of_utterance>\\n``...). The closing tokens are scored as response.
2. The prompt is run through the processor with its image (image placeholders expanded to one
   token per image feature), the responses through the tokenizer; both with
   ``add_special_tokens=False`` (the template already holds BOS).
3. ``log p(response) = sum over response tokens t of log p(token_t | prompt, response_<t)``.
4. With ``max_length`` the sequence ``[prompt | response]`` is cut to ``max_length`` tokens
   from the end (TRL's ``keep_start``); povidgen refuses rows whose prompt alone reaches
   ``max_length`` (TRL would silently cut image tokens or drop the row).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

import torch
from torch import Tensor

from povidgen.errors import InputError
from povidgen.train.families import FamilyAdapter, cat_vision

__all__ = ["PreferenceBatch", "PreferenceCollator", "TrainingDataError"]

logger = logging.getLogger("povidgen")

_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"})


class TrainingDataError(InputError):
    """A training row or dataset cannot be used; the message names the row and the fault."""


@dataclass
class PreferenceBatch:
    """One collated batch of ``B`` pairs, unpadded: the step decides the layout.

    Attributes:
        ids: the rows' ids.
        prompt_ids: ``B`` 1-D long tensors, image placeholders expanded.
        chosen_ids, rejected_ids: ``B`` 1-D long tensors each (already cut to ``max_length``).
        vision: the clean images' vision inputs (``pixel_values``...), one image per row.
        vision_rows: the same, one dict per row (for per-row position ids).
        mm_token_type_ids: per-row prompt token types (Qwen2-VL-style models), else ``None``.
        noisy_vision: the distorted images' vision inputs (``image`` and ``povid`` modes).
        noisy_chosen_ids: the chosen answer as scored after the noisy prompt (it can differ
            from ``chosen_ids`` only by truncation, when the noisy prompt is longer).
        keys: per-row content fingerprints (prompt, responses, image bytes) for caches.
        pair_modes: mode ``auto`` only: each row's pair mode (``text``, ``image`` or
            ``both``, :func:`povidgen.pairs.modes.pair_mode_of`); ``None`` in other modes.
    """

    ids: list[str]
    prompt_ids: list[Tensor]
    chosen_ids: list[Tensor]
    rejected_ids: list[Tensor]
    vision: dict[str, Tensor]
    vision_rows: list[dict[str, Tensor]]
    mm_token_type_ids: list[Tensor] | None = None
    noisy_prompt_ids: list[Tensor] | None = None
    noisy_vision: dict[str, Tensor] | None = None
    noisy_vision_rows: list[dict[str, Tensor]] | None = None
    noisy_mm_token_type_ids: list[Tensor] | None = None
    keys: list[str] = field(default_factory=list)
    pair_modes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def response_lengths(self) -> tuple[Tensor, Tensor]:
        """``(B,)`` token counts of the chosen and of the rejected responses (on the batch's
        device)."""
        device = self.chosen_ids[0].device
        chosen = torch.tensor([len(c) for c in self.chosen_ids], device=device)
        rejected = torch.tensor([len(r) for r in self.rejected_ids], device=device)
        return chosen, rejected

    def contrast_masks(self) -> tuple[Tensor, Tensor]:
        """``(B,)`` bool masks ``(has_text, has_image)``: which contrasts each row carries
        (mode ``auto``; without ``pair_modes`` every row carries both, as in ``povid``)."""
        device = self.chosen_ids[0].device
        modes = self.pair_modes or ["both"] * len(self)
        text = torch.tensor([m != "image" for m in modes], dtype=torch.bool, device=device)
        image = torch.tensor([m != "text" for m in modes], dtype=torch.bool, device=device)
        return text, image

    def to(self, device: torch.device | str) -> PreferenceBatch:
        """A copy with every tensor on ``device``."""

        def move(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.to(device)
            if isinstance(value, list):
                return [move(v) for v in value]
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return PreferenceBatch(**{k: move(v) for k, v in vars(self).items()})


def _typed(messages: Any, row: str, column: str) -> list[dict[str, Any]]:
    """Messages with typed content: a plain string becomes ``[{"type": "text", ...}]``."""
    if not isinstance(messages, list) or not messages:
        raise TrainingDataError(f"row {row}: {column!r} must be a non-empty list of messages")
    out = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TrainingDataError(
                f"row {row}: {column!r} holds {message!r}, not a {{'role', 'content'}} message"
            )
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        # datasets stores typed content as structs with every field; drop the empty ones
        content = [{k: v for k, v in part.items() if v is not None} for part in content]
        out.append({"role": message["role"], "content": content})
    return out


def _response_text(messages: list[dict[str, Any]]) -> str:
    return "".join(
        part.get("text", "")
        for m in messages
        for part in m["content"]
        if part.get("type") == "text"
    )


def _image_count(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages for part in m["content"] if part.get("type") == "image")


def _single_image(value: Any, row: str, column: str) -> Any:
    from povidgen.errors import ImageError
    from povidgen.sources.images import open_image

    if isinstance(value, list | tuple) and len(value) != 1:
        raise TrainingDataError(
            f"row {row}: {column!r} has {len(value)} images; povidgen.train takes exactly one "
            "image per pair (multi-image rows are not supported)"
        )
    try:
        return open_image(value).image
    except ImageError as error:
        raise TrainingDataError(f"row {row}: {column!r}: {error}") from error


def _image_bytes(image: Any) -> bytes:
    data: bytes = image.tobytes()
    return data + repr((image.mode, image.size)).encode()


@dataclass
class _Tokenized:
    prompt: Tensor
    vision: dict[str, Tensor]
    mm_types: Tensor | None


class PreferenceCollator:
    """Collates rows into a :class:`PreferenceBatch` for a model family and a training mode.

    Args:
        processor: the model's processor (tokenizer, image processor, chat template).
        family: the model's :class:`FamilyAdapter`.
        mode: ``"text"``, ``"image"``, ``"povid"`` or ``"auto"`` (each row by its pair mode,
            :func:`povidgen.pairs.modes.pair_mode_of`: a ``text`` row's noisy prompt is its
            clean one, a stand-in the loss masks out).
        distorter: makes the rejected image in ``image`` / ``povid`` / ``auto`` mode when
            given; else the rows' ``rejected_images`` are used.
        seed: global seed; a row's distortion seed is its ``provenance.example_seed`` (what
            the build used) or, without provenance, ``derive_seed(seed, id)``.
        max_length: longest ``[prompt | response]``, see the module docstring.
    """

    def __init__(
        self,
        processor: Any,
        family: FamilyAdapter,
        *,
        mode: str = "text",
        distorter: Any = None,
        seed: int = 0,
        max_length: int | None = None,
    ) -> None:
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or getattr(processor, "chat_template", None) is None:
            raise TrainingDataError(
                "the processor needs a tokenizer and a chat template (processor.chat_template)"
            )
        self.processor = processor
        self.tokenizer = tokenizer
        self.family = family
        self.mode = mode
        self.distorter = distorter
        self.seed = seed
        self.max_length = max_length

    def distortion_seed(self, row: dict[str, Any], row_id: str) -> int:
        """The seed a row's rejected image is made with: the build's own
        (``provenance.example_seed``), so a build written with ``--no-rejected-images``
        gets exactly the image it would have stored; ``derive_seed(seed, id)`` for rows
        without provenance."""
        provenance = row.get("provenance")
        if isinstance(provenance, dict) and isinstance(provenance.get("example_seed"), int):
            return int(provenance["example_seed"])
        from povidgen.seeding import derive_seed

        return derive_seed(self.seed, row_id)

    # -- text ----------------------------------------------------------------------------

    def split_texts(
        self, prompt: list[dict[str, Any]], responses: Sequence[list[dict[str, Any]]]
    ) -> tuple[str, list[str]]:
        """The prompt text and each response's text under the chat template (TRL's rule)."""
        template = self.processor.apply_chat_template
        prompt_text = template(prompt, tokenize=False, add_generation_prompt=True)
        fulls = [template(prompt + list(r), tokenize=False) for r in responses]
        common = prompt_text
        for full in fulls:
            common = "".join(
                a for a, _ in takewhile(lambda ab: ab[0] == ab[1], zip(common, full, strict=False))
            )
        return common, [full[len(common) :] for full in fulls]

    def _tokens(self, text: str) -> Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def _prompt(self, text: str, image: Any) -> _Tokenized:
        out = self.processor(
            images=[image], text=[text], add_special_tokens=False, return_tensors="pt"
        )
        vision = {k: v for k, v in out.items() if k not in _TEXT_KEYS and isinstance(v, Tensor)}
        types = out.get("mm_token_type_ids")
        return _Tokenized(out["input_ids"][0], vision, None if types is None else types[0])

    def _cut(self, row: str, prompt: Tensor, response: Tensor, what: str) -> Tensor:
        if self.max_length is None:
            return response
        room = self.max_length - len(prompt)
        if room < 1:
            raise TrainingDataError(
                f"row {row}: the prompt is {len(prompt)} tokens (image tokens included), so "
                f"max_length={self.max_length} would cut image tokens or leave no {what} token; "
                "raise max_length or shorten the prompt"
            )
        return response[:room]

    # -- rows ----------------------------------------------------------------------------

    def __call__(self, rows: Sequence[dict[str, Any]]) -> PreferenceBatch:
        """Collate ``rows`` (dicts of the published columns)."""
        if not rows:
            raise TrainingDataError("an empty batch")
        ids: list[str] = []
        prompts: list[_Tokenized] = []
        noisy: list[_Tokenized] = []
        chosen: list[Tensor] = []
        rejected: list[Tensor] = []
        keys: list[str] = []
        modes: list[str] = []
        need_noisy = self.mode in ("image", "povid", "auto")
        for position, row in enumerate(rows):
            row_id = str(row.get("id", f"#{position}"))
            if self.mode == "auto":
                from povidgen.pairs.modes import pair_mode_of

                modes.append(pair_mode_of(row))
            image = _single_image(row.get("images"), row_id, "images")
            prompt = _typed(row.get("prompt"), row_id, "prompt")
            if _image_count(prompt) != 1:
                raise TrainingDataError(
                    f"row {row_id}: the prompt must hold exactly one image placeholder "
                    f"({{'type': 'image'}}), it holds {_image_count(prompt)}"
                )
            answers = [_typed(row.get("chosen"), row_id, "chosen")]
            if self.mode != "image":
                answers.append(_typed(row.get("rejected"), row_id, "rejected"))
            for column, answer in zip(("chosen", "rejected"), answers, strict=False):
                if not _response_text(answer).strip():
                    raise TrainingDataError(f"row {row_id}: {column!r} is empty")
            if self.mode == "text" and _response_text(answers[0]) == _response_text(answers[1]):
                # an image-contrast pair (povidgen.pairs.modes): DPO on it has zero gradient
                raise TrainingDataError(
                    f"row {row_id}: 'rejected' equals 'chosen' (an image-contrast pair): mode "
                    "'text' learns nothing from it; train it with mode 'image' or 'povid', or "
                    "leave image pairs out (provenance.pair_mode == 'image')"
                )
            prompt_text, texts = self.split_texts(prompt, answers)
            tokenized = self._prompt(prompt_text, image)
            c = self._cut(row_id, tokenized.prompt, self._tokens(texts[0]), "chosen")
            r = self._cut(row_id, tokenized.prompt, self._tokens(texts[-1]), "rejected")
            # auto: the noisy score means log p(c | I_noisy) on an image row, the argmax score
            # on a both row, so the mode is part of what a cached reference score depends on
            digest = [prompt_text, *texts, *modes[-1:]]
            if need_noisy:
                noisy_image = (
                    image
                    if self.mode == "auto" and modes[-1] == "text"
                    else self._noisy_image(row, row_id, image)
                )
                noisy.append(self._prompt(prompt_text, noisy_image))
                if len(noisy[-1].prompt) != len(tokenized.prompt):
                    raise TrainingDataError(
                        f"row {row_id}: the distorted image gives {len(noisy[-1].prompt)} prompt "
                        f"tokens but the clean one {len(tokenized.prompt)}; the rejected image "
                        "must keep the clean image's size"
                    )
                digest.append(_fingerprint_image(noisy_image))
            ids.append(row_id)
            prompts.append(tokenized)
            chosen.append(c)
            rejected.append(r)
            keys.append(_fingerprint(digest, image))
        batch = PreferenceBatch(
            ids=ids,
            prompt_ids=[p.prompt for p in prompts],
            chosen_ids=chosen,
            rejected_ids=rejected,
            vision=cat_vision([p.vision for p in prompts]),
            vision_rows=[p.vision for p in prompts],
            mm_token_type_ids=_types(prompts),
            keys=keys,
            pair_modes=modes if self.mode == "auto" else None,
        )
        if need_noisy:
            batch.noisy_prompt_ids = [p.prompt for p in noisy]
            batch.noisy_vision = cat_vision([p.vision for p in noisy])
            batch.noisy_vision_rows = [p.vision for p in noisy]
            batch.noisy_mm_token_type_ids = _types(noisy)
        return batch

    def _noisy_image(self, row: dict[str, Any], row_id: str, image: Any) -> Any:
        if self.distorter is not None:
            return self.distorter(image, seed=self.distortion_seed(row, row_id))
        if row.get("rejected_images") is None:
            from povidgen.pairs.modes import pair_mode_of

            text_pair = (
                " (a text-contrast pair, pair_mode 'text': train it with mode 'text', or leave "
                "text pairs out)"
                if pair_mode_of(row) == "text"
                else ""
            )
            raise TrainingDataError(
                f"row {row_id}: mode {self.mode!r} needs a rejected image: the row has no "
                f"'rejected_images' and no distorter was given{text_pair}"
            )
        return _single_image(row["rejected_images"], row_id, "rejected_images")


def _types(tokenized: list[_Tokenized]) -> list[Tensor] | None:
    if any(t.mm_types is None for t in tokenized):
        return None
    return [t.mm_types for t in tokenized if t.mm_types is not None]


def _fingerprint_image(image: Any) -> str:
    import hashlib

    return hashlib.blake2b(_image_bytes(image), digest_size=16).hexdigest()


def _fingerprint(parts: list[str], image: Any) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for part in [*parts, _fingerprint_image(image)]:
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()
