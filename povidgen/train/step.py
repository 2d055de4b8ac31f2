"""Per-sequence log-probs of a batch of pairs: the efficient layout and the plain one.

**Packed layout** (``packing=True``), for ``B`` pairs with prompt ``P_b`` (image tokens
included) and responses ``c_b``, ``r_b``::

    vision tower:  once per pair (and shared with the reference when it is frozen)
    decoder:       [P_0 | c_0 | r_0 | P_1 | c_1 | r_1 | ...]   one forward, padding-free rows,
                   each response sees its prompt and itself (pack_shared_prefix)
    LM head:       response positions only, chunked (sequence_logps)

**Plain layout** (``packing=False``): the model's own forward on ``2B`` right-padded rows
``[P_b | c_b]`` and ``[P_b | r_b]``, as TRL lays them out (the vision tower runs per row). It is
the fallback for attention implementations that cannot take a packed 4-D mask, and the
reference the packed layout is tested against.

Modes (what the two or three scores are, all ``(B,)`` sums over response tokens):

* ``text``:  ``chosen = log p(c | I, q)``, ``rejected = log p(r | I, q)``;
* ``image``: ``chosen = log p(c | I, q)``, ``rejected = log p(c | I_noisy, q)``;
* ``povid``: ``text``'s two scores and ``noisy = sum_t log p(yhat_t | I, q, c_<t)`` with
  ``yhat_t = argmax_v p(v | I_noisy, q, c_<t)`` (no gradient through the noisy stream).
* ``auto`` (each row by its pair mode): ``povid``'s three scores, except that an ``image``
  row's ``noisy`` is ``log p(c | I_noisy, q)`` (``image``'s ``rejected``; the noisy stream
  then keeps its graph). A ``text`` row's noisy stream runs on its clean image, a stand-in
  the loss masks out (it costs one extra prompt pass per text row).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from povidgen.train.collate import PreferenceBatch, TrainingDataError
from povidgen.train.families import FamilyAdapter, cat_vision
from povidgen.train.logps import sequence_logps
from povidgen.train.noisy import Overlap, noisy_tokens
from povidgen.train.packing import (
    SUPPORTED_ATTN_IMPLEMENTATIONS,
    gather_response_hidden,
    model_inputs,
    pack_shared_prefix,
)

__all__ = ["Scorer", "Scores"]

logger = logging.getLogger("povidgen")

IGNORE = -100


@dataclass
class Scores:
    """Summed response log-probs of a batch, each ``(B,)`` fp32.

    Attributes:
        chosen, rejected: the chosen and the rejected response (see the module docstring for
            what ``rejected`` is in each mode).
        noisy: POVID stage 2's noisy-image score, ``None`` in other modes; in mode ``auto``
            an ``image`` row's ``log p(c | I_noisy, q)`` instead (what mode ``image`` calls
            ``rejected``), a ``both`` row's argmax score, a ``text`` row's a masked stand-in.
        chosen_lengths, rejected_lengths: response token counts.
    """

    chosen: Tensor
    rejected: Tensor
    noisy: Tensor | None
    chosen_lengths: Tensor
    rejected_lengths: Tensor

    def detach(self) -> Scores:
        """The same scores without graph."""
        return Scores(
            self.chosen.detach(),
            self.rejected.detach(),
            None if self.noisy is None else self.noisy.detach(),
            self.chosen_lengths,
            self.rejected_lengths,
        )


@dataclass
class _Group:
    prefix: Tensor
    responses: list[Tensor]
    features: Tensor | None
    positions: Tensor | None


class Scorer:
    """Computes :class:`Scores` for a model family in the packed or the plain layout.

    Args:
        family: the model's :class:`FamilyAdapter`.
        mode: ``"text"``, ``"image"``, ``"povid"`` or ``"auto"`` (``povid``'s three scores,
            with ``noisy`` per row as :class:`Scores` says).
        packing: use the packed layout where the attention implementation allows it.
        padding_free: with packing, several pairs per row.
        chunk_size: see :func:`povidgen.train.sequence_logps`.
        overlap: POVID stage 2's rule where the noisy argmax is the gold token.
        pad_token_id: written on padding.
    """

    def __init__(
        self,
        family: FamilyAdapter,
        *,
        mode: str = "text",
        packing: bool = True,
        padding_free: bool = True,
        chunk_size: int = 1024,
        overlap: Overlap = "keep",
        pad_token_id: int = 0,
    ) -> None:
        self.family = family
        self.mode = mode
        self.packing = packing
        self.padding_free = padding_free
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.pad_token_id = pad_token_id
        self._warned = False

    # -- public --------------------------------------------------------------------------

    def features(self, model: nn.Module, vision: dict[str, Tensor]) -> list[Tensor]:
        """Image features, one ``(n_b, H)`` tensor per row (run under ``no_grad`` to share
        them between policy and reference)."""
        return self.family.image_features(model, vision)

    def uses_packing(self, model: nn.Module) -> bool:
        """Whether ``model`` can be scored in the packed layout (else the plain one is used,
        and why is logged once)."""
        if not self.packing:
            return False
        attn = _attn_implementation(self.family.decoder(model))
        if attn not in SUPPORTED_ATTN_IMPLEMENTATIONS:
            if not self._warned:
                logger.warning(
                    "attention implementation %r takes no packed 4-D mask; scoring in the plain "
                    "layout (use sdpa, eager or flex_attention for the packed one)",
                    attn,
                )
                self._warned = True
            return False
        return True

    def score(
        self,
        model: nn.Module,
        batch: PreferenceBatch,
        *,
        features: list[Tensor] | None = None,
        noisy_features: list[Tensor] | None = None,
    ) -> Scores:
        """Score ``batch`` with ``model``; differentiable unless called under ``no_grad``.

        ``features`` / ``noisy_features`` are image features computed beforehand (shared
        with the reference); otherwise the vision tower runs here.
        """
        if self.uses_packing(model):
            return self._score_packed(model, batch, features, noisy_features)
        return self._score_plain(model, batch)

    # -- packed --------------------------------------------------------------------------

    def _groups(
        self,
        model: nn.Module,
        batch: PreferenceBatch,
        responses: Sequence[list[Tensor]],
        noisy: bool,
        features: list[Tensor] | None,
    ) -> list[_Group]:
        prompts = batch.noisy_prompt_ids if noisy else batch.prompt_ids
        vision = batch.noisy_vision if noisy else batch.vision
        rows = batch.noisy_vision_rows if noisy else batch.vision_rows
        types = batch.noisy_mm_token_type_ids if noisy else batch.mm_token_type_ids
        assert prompts is not None
        assert vision is not None
        assert rows is not None
        if features is None:
            features = self.features(model, vision)
        token = self.family.image_token_id(model)
        groups = []
        for b, prefix in enumerate(prompts):
            n_tokens = int((prefix == token).sum())
            if n_tokens != features[b].shape[0]:
                raise TrainingDataError(
                    f"row {batch.ids[b]}: the prompt holds {n_tokens} image tokens but the vision "
                    f"tower gave {features[b].shape[0]} image features (a processor and model "
                    "that do not match?)"
                )
            positions = self.family.prompt_positions(
                model, prefix, rows[b], None if types is None else types[b]
            )
            groups.append(_Group(prefix, responses[b], features[b], positions))
        return groups

    def _packed_hidden(self, model: nn.Module, groups: list[_Group]) -> tuple[Tensor, Tensor]:
        """``(G * K, Lr, H)`` hidden states that predict each response and their labels."""
        mrope = [g.positions for g in groups if g.positions is not None]
        packed = pack_shared_prefix(
            [g.prefix for g in groups],
            [g.responses for g in groups],
            pad_token_id=self.pad_token_id,
            prefix_position_ids=mrope if len(mrope) == len(groups) else None,
            pack_rows=self.padding_free,
        )
        vlm = self.family.vlm(model)
        embeds = vlm.get_input_embeddings()(packed.input_ids)
        # groups sit row-major in the packed rows, which first-fit need not keep in input order
        order = sorted(range(len(groups)), key=lambda g: packed.response_slices[g][:2])
        feats = [f for f in (groups[g].features for g in order) if f is not None]
        if feats:
            image = (packed.input_ids == self.family.image_token_id(model)) & (
                packed.segment_ids == 0
            )
            values = torch.cat(feats).to(embeds.dtype)
            embeds = embeds.masked_scatter(image[..., None], values)
        decoder = self.family.decoder(model)
        attn = _attn_implementation(decoder)
        inputs = model_inputs(
            packed,
            dtype=embeds.dtype if attn == "eager" else None,
            attn_implementation=attn,
        )
        hidden = decoder(
            inputs_embeds=embeds,
            position_ids=inputs["position_ids"],
            attention_mask=inputs["attention_mask"],
            use_cache=False,
        ).last_hidden_state
        return gather_response_hidden(hidden, packed, ignore_index=IGNORE)

    def _score_packed(
        self,
        model: nn.Module,
        batch: PreferenceBatch,
        features: list[Tensor] | None,
        noisy_features: list[Tensor] | None,
    ) -> Scores:
        weight = self.family.lm_head_weight(model)
        n = len(batch)
        if self.mode == "image":
            clean = self._groups(model, batch, [[c] for c in batch.chosen_ids], False, features)
            noisy = self._groups(
                model, batch, [[c] for c in batch.chosen_ids], True, noisy_features
            )
            hidden, labels = self._packed_hidden(model, clean + noisy)
            logps = self._logps(hidden, weight, labels)
            lengths, _ = batch.response_lengths()
            return Scores(logps[:n], logps[n:], None, lengths, lengths)
        pairs = [[c, r] for c, r in zip(batch.chosen_ids, batch.rejected_ids, strict=True)]
        hidden, labels = self._packed_hidden(
            model, self._groups(model, batch, pairs, False, features)
        )
        logps = self._logps(hidden, weight, labels).view(n, 2)
        noisy_score = None
        if self.mode in ("povid", "auto"):
            image_rows = self._image_rows(batch)
            with torch.set_grad_enabled(torch.is_grad_enabled() and image_rows is not None):
                noisy_hidden, noisy_labels = self._packed_hidden(
                    model,
                    self._groups(
                        model, batch, [[c] for c in batch.chosen_ids], True, noisy_features
                    ),
                )
            noisy_score = self._noisy_score(
                hidden[0::2], weight, noisy_hidden, noisy_labels, shift=False
            )
            if image_rows is not None:
                noisy_chosen = self._logps(noisy_hidden, weight, noisy_labels)
                noisy_score = torch.where(image_rows, noisy_chosen, noisy_score)
        return Scores(logps[:, 0], logps[:, 1], noisy_score, *batch.response_lengths())

    def _logps(self, hidden: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
        return sequence_logps(
            hidden, weight, labels, ignore_index=IGNORE, chunk_size=self.chunk_size, shift=False
        )

    # -- plain ---------------------------------------------------------------------------

    def _plain_hidden(
        self,
        model: nn.Module,
        prompts: list[Tensor],
        responses: list[Tensor],
        vision_rows: list[dict[str, Tensor]],
        types: list[Tensor] | None,
    ) -> tuple[Tensor, Tensor]:
        """Right-padded ``[prompt | response]`` rows through the model's own forward:
        ``(N, T, H)`` last hidden states and ``(N, T)`` labels (HF shift convention)."""
        length = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
        device = prompts[0].device
        n = len(prompts)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(n, length, dtype=torch.long, device=device)
        labels = torch.full((n, length), IGNORE, dtype=torch.long, device=device)
        mm_types = torch.zeros(n, length, dtype=torch.long, device=device)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            seq = torch.cat([p, r])
            input_ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
            labels[i, len(p) : len(seq)] = r
            if types is not None:
                mm_types[i, : len(p)] = types[i]
        kwargs: dict[str, Any] = dict(cat_vision(vision_rows))
        if self.family.mrope:
            kwargs["mm_token_type_ids"] = mm_types
        out = self.family.vlm(model)(
            input_ids=input_ids, attention_mask=mask, use_cache=False, **kwargs
        )
        return out.last_hidden_state, labels

    def _score_plain(self, model: nn.Module, batch: PreferenceBatch) -> Scores:
        weight = self.family.lm_head_weight(model)
        n = len(batch)
        chosen = list(batch.chosen_ids)
        if self.mode == "image":
            assert batch.noisy_prompt_ids is not None
            assert batch.noisy_vision_rows is not None
            prompts = batch.prompt_ids + batch.noisy_prompt_ids
            rows = batch.vision_rows + batch.noisy_vision_rows
            types = _join(batch.mm_token_type_ids, batch.noisy_mm_token_type_ids)
            hidden, labels = self._plain_hidden(model, prompts, chosen + chosen, rows, types)
            logps = self._shifted_logps(hidden, weight, labels)
            lengths, _ = batch.response_lengths()
            return Scores(logps[:n], logps[n:], None, lengths, lengths)
        hidden, labels = self._plain_hidden(
            model,
            batch.prompt_ids + batch.prompt_ids,
            chosen + list(batch.rejected_ids),
            batch.vision_rows + batch.vision_rows,
            _join(batch.mm_token_type_ids, batch.mm_token_type_ids),
        )
        logps = self._shifted_logps(hidden, weight, labels)
        noisy_score = None
        if self.mode in ("povid", "auto"):
            assert batch.noisy_prompt_ids is not None
            assert batch.noisy_vision_rows is not None
            image_rows = self._image_rows(batch)
            with torch.set_grad_enabled(torch.is_grad_enabled() and image_rows is not None):
                noisy_hidden, noisy_labels = self._plain_hidden(
                    model,
                    batch.noisy_prompt_ids,
                    chosen,
                    batch.noisy_vision_rows,
                    batch.noisy_mm_token_type_ids,
                )
            noisy_score = self._noisy_score(
                hidden[:n], weight, noisy_hidden, noisy_labels, shift=True
            )
            if image_rows is not None:
                noisy_chosen = self._shifted_logps(noisy_hidden, weight, noisy_labels)
                noisy_score = torch.where(image_rows, noisy_chosen, noisy_score)
        return Scores(logps[:n], logps[n:], noisy_score, *batch.response_lengths())

    def _image_rows(self, batch: PreferenceBatch) -> Tensor | None:
        """Mode ``auto``: the ``(B,)`` mask of image-only rows, whose noisy score is the
        chosen answer under the noisy image (so the noisy stream keeps its graph); ``None``
        when there are none (the noisy stream then runs without graph, as in ``povid``)."""
        if batch.pair_modes is None or "image" not in batch.pair_modes:
            return None
        return torch.tensor(
            [m == "image" for m in batch.pair_modes], device=batch.chosen_ids[0].device
        )

    def _noisy_score(
        self,
        chosen_hidden: Tensor,
        weight: Tensor,
        noisy_hidden: Tensor,
        noisy_labels: Tensor,
        *,
        shift: bool,
    ) -> Tensor:
        """POVID's noisy score: the argmax tokens of the noisy stream (no graph), scored with
        the clean stream's hidden states of the chosen answer (same positions, padded)."""
        with torch.no_grad():
            tokens = noisy_tokens(
                noisy_hidden,
                noisy_labels,
                lm_head_weight=weight,
                overlap=self.overlap,
                ignore_index=IGNORE,
                shift=shift,
                chunk_size=self.chunk_size,
            )
        width = chosen_hidden.shape[1]
        tokens = nn.functional.pad(tokens, (0, width - tokens.shape[1]), value=IGNORE)
        return sequence_logps(
            chosen_hidden,
            weight,
            tokens,
            ignore_index=IGNORE,
            chunk_size=self.chunk_size,
            shift=shift,
        )

    def _shifted_logps(self, hidden: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
        return sequence_logps(
            hidden, weight, labels, ignore_index=IGNORE, chunk_size=self.chunk_size, shift=True
        )


def _attn_implementation(decoder: nn.Module) -> str:
    config = getattr(decoder, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def _join(first: list[Tensor] | None, second: list[Tensor] | None) -> list[Tensor] | None:
    if first is None or second is None:
        return None
    return first + second
