"""Shared-prefix packing: one forward pass for a prompt and all of its responses.

A DPO step scores a chosen and one or more rejected answers to the *same* prompt, and the prompt
of a vision-language model is long (hundreds of image tokens). Instead of running the prompt once
per response, pack it once and let every response attend to it::

    one group (prefix P tokens, K = 3 responses of lengths A, B, C):

    token      | p0 p1 .. p(P-1) | a0 .. a(A-1)  | b0 .. b(B-1)  | c0 .. c(C-1)  | pad ..
    segment_id |  0  0 ..  0     |  1 ..  1      |  2 ..  2      |  3 ..  3      | -1
    position   |  0  1 .. P-1    |  P .. P+A-1   |  P .. P+B-1   |  P .. P+C-1   |  0

    attention (row = query, column = key; blank = masked, causal = lower triangle):

                 prefix   resp 1   resp 2   resp 3
      prefix   [ causal                            ]
      resp 1   [ all      causal                   ]
      resp 2   [ all               causal          ]
      resp 3   [ all                        causal ]

Every response restarts its positions where the prefix ends, so each response sees exactly what
it would see in a separate forward of ``[prefix | response]``: same keys, same rotary phases.
With the 3-D multimodal RoPE of Qwen2-VL-style models, pass the prefix's ``(3, P)`` ids from the
model's ``get_rope_index``; the responses then continue at ``prefix_ids.max() + 1`` in all three
rows, which is what ``get_rope_index`` gives for text that follows the prefix.

The logits that score a response are *not* the packed row shifted by one: the first token of
every response is predicted by the last prefix position, the others by the previous position of
the same response (see :func:`response_targets` and :func:`gather_response_hidden`).

Padding-free packing (``pack_rows=True``) puts several groups in one row; each group's positions
restart at 0 and no group attends to another::

    row 0: | prefix_0 | r0_1 | r0_2 | prefix_1 | r1_1 | r1_2 | prefix_2 | r2_1 | r2_2 | pad |
    group  |    0     |  0   |  0   |    1     |  1   |  1   |    2     |  2   |  2   | -1  |

Feeding a Hugging Face causal LM (transformers 5.x): a 4-D ``attention_mask`` of shape
``(R, 1, L, L)`` is used as-is by ``create_causal_mask``; the "sdpa" attention takes it boolean
(``True`` = attend), "eager" adds it to the scores, so it must be additive (0 / dtype-min) in the
model's dtype. :func:`model_inputs` returns the right form.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

import torch

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

__all__ = [
    "GroupSlices",
    "PackedBatch",
    "flex_block_mask",
    "gather_response_hidden",
    "model_inputs",
    "pack_shared_prefix",
    "packed_response_logps",
    "response_targets",
    "unpack_response_logps",
]

#: The attention implementations of transformers that :func:`model_inputs` can feed.
SUPPORTED_ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")


class GroupSlices(NamedTuple):
    """Where one group (prefix + its responses) lies in a :class:`PackedBatch`.

    A plain tuple ``(row, prefix_start, prefix_end, [(start, end), ...])``; all ends exclusive.
    """

    row: int
    prefix_start: int
    prefix_end: int
    responses: list[tuple[int, int]]


@dataclass
class PackedBatch:
    """Groups ``[prefix | response_1 | ... | response_K]`` packed in ``R`` rows of length ``L``.

    Attributes:
        input_ids: ``(R, L)`` long; padding holds ``pad_token_id``.
        position_ids: ``(R, L)`` long, or ``(3, R, L)`` when 3-D (mrope) prefix ids were given;
            0 on padding.
        segment_ids: ``(R, L)`` long; 0 = prefix, k = k-th response (1-based), -1 = padding.
        group_ids: ``(R, L)`` long; index of the group (in input order, unique in the batch) a
            token belongs to, -1 = padding.
        attention_mask: ``(R, 1, L, L)`` bool, ``True`` = query (dim 2) may attend key (dim 3).
            Padding queries attend only to themselves, so no row is fully masked.
        response_slices: one :class:`GroupSlices` per group, in input order.
        num_responses: ``K``, the number of responses of every group.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    group_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_slices: list[GroupSlices]
    num_responses: int

    @property
    def num_groups(self) -> int:
        """``G``, the number of packed groups."""
        return len(self.response_slices)

    def to(self, device: torch.device | str) -> PackedBatch:
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            segment_ids=self.segment_ids.to(device),
            group_ids=self.group_ids.to(device),
            attention_mask=self.attention_mask.to(device),
        )


def _is_index_tensor(value: object) -> TypeGuard[torch.Tensor]:
    return (
        isinstance(value, torch.Tensor)
        and not value.dtype.is_floating_point
        and not value.dtype.is_complex
        and value.dtype != torch.bool
    )


def _check_tokens(value: object, what: str) -> torch.Tensor:
    if not _is_index_tensor(value):
        raise ValueError(f"{what} must be an integer torch.Tensor, got {type(value).__name__}")
    if value.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{what} is empty")
    return value


def _validate(
    prefixes: Sequence[torch.Tensor],
    responses: Sequence[Sequence[torch.Tensor]],
    prefix_position_ids: Sequence[torch.Tensor] | None,
    max_length: int | None,
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], list[torch.Tensor] | None, int]:
    if isinstance(prefixes, torch.Tensor):
        raise ValueError("prefixes must be a sequence of 1-D tensors, not a single tensor")
    if len(prefixes) == 0:
        raise ValueError("no groups to pack: prefixes is empty")
    if len(responses) != len(prefixes):
        raise ValueError(f"got {len(prefixes)} prefixes but {len(responses)} groups of responses")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    pre = [_check_tokens(p, f"prefixes[{g}]") for g, p in enumerate(prefixes)]
    resp: list[list[torch.Tensor]] = []
    num_responses = -1
    for g, group in enumerate(responses):
        if isinstance(group, torch.Tensor) and group.ndim < 2:
            raise ValueError(f"responses[{g}] must be a sequence of 1-D tensors")
        items = [_check_tokens(r, f"responses[{g}][{k}]") for k, r in enumerate(group)]
        if not items:
            raise ValueError(f"responses[{g}] has no responses")
        if num_responses == -1:
            num_responses = len(items)
        elif len(items) != num_responses:
            raise ValueError(
                f"every group needs the same number of responses: responses[0] has "
                f"{num_responses}, responses[{g}] has {len(items)}"
            )
        length = len(pre[g]) + sum(len(r) for r in items)
        if max_length is not None and length > max_length:
            raise ValueError(f"group {g} has {length} tokens, more than max_length={max_length}")
        resp.append(items)
    mrope: list[torch.Tensor] | None = None
    if prefix_position_ids is not None:
        if len(prefix_position_ids) != len(pre):
            raise ValueError(
                f"got {len(prefix_position_ids)} prefix_position_ids for {len(pre)} prefixes"
            )
        mrope = []
        for g, ids in enumerate(prefix_position_ids):
            if not _is_index_tensor(ids):
                raise ValueError(f"prefix_position_ids[{g}] must be an integer torch.Tensor")
            if tuple(ids.shape) != (3, len(pre[g])):
                raise ValueError(
                    f"prefix_position_ids[{g}] must have shape (3, {len(pre[g])}) to match "
                    f"prefixes[{g}], got {tuple(ids.shape)}"
                )
            mrope.append(ids)
    return pre, resp, mrope, num_responses


def _assign_rows(lengths: list[int], pack_rows: bool, max_length: int | None) -> list[list[int]]:
    """Group indices per row: one group a row, or first-fit in input order."""
    if not pack_rows:
        return [[g] for g in range(len(lengths))]
    capacity = math.inf if max_length is None else max_length
    rows: list[list[int]] = []
    used: list[int] = []
    for g, length in enumerate(lengths):
        for r in range(len(rows)):
            if used[r] + length <= capacity:
                rows[r].append(g)
                used[r] += length
                break
        else:
            rows.append([g])
            used.append(length)
    return rows


def _build_mask(group_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """``(R, 1, L, L)`` bool: same group, causal, key in the prefix or in the query's segment."""
    length = group_ids.shape[-1]
    valid = group_ids >= 0
    causal = torch.ones(length, length, dtype=torch.bool, device=group_ids.device).tril()
    same_group = group_ids[:, :, None] == group_ids[:, None, :]
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    visible = (seg_k == 0) | (seg_k == seg_q)
    mask = valid[:, :, None] & same_group & causal & visible
    eye = torch.eye(length, dtype=torch.bool, device=group_ids.device)
    mask = mask | (eye & ~valid[:, :, None])
    return mask[:, None]


def pack_shared_prefix(
    prefixes: Sequence[torch.Tensor],
    responses: Sequence[Sequence[torch.Tensor]],
    *,
    pad_token_id: int = 0,
    prefix_position_ids: Sequence[torch.Tensor] | None = None,
    max_length: int | None = None,
    pack_rows: bool = False,
) -> PackedBatch:
    """Pack each prefix with its ``K`` responses: ``[prefix | response_1 | ... | response_K]``.

    Args:
        prefixes: ``G`` 1-D integer tensors ``(P_g,)``: the prompts, image tokens included.
        responses: ``G`` sequences of ``K`` 1-D integer tensors (e.g. chosen, rejected); ``K``
            must be the same for every group.
        pad_token_id: token id written on padding.
        prefix_position_ids: optional ``G`` tensors ``(3, P_g)``: the 3-D (temporal, height,
            width) RoPE ids of each prefix, as ``get_rope_index`` of a Qwen2-VL-style model
            gives them. Responses then continue at ``ids.max() + 1 + arange(len)`` in all three
            rows, and :attr:`PackedBatch.position_ids` is ``(3, R, L)``.
        max_length: longest row allowed; a group longer than this is an error. Without
            ``pack_rows`` rows are padded to the longest row, not to ``max_length``.
        pack_rows: pack several groups per row (first fit, in input order) up to
            ``max_length`` tokens (all in one row without ``max_length``). Otherwise one group
            per row, right-padded.

    Returns:
        A :class:`PackedBatch`; its layout is drawn in this module's docstring.

    Raises:
        ValueError: on an empty prefix or response, a tensor that is not 1-D and integer, a
            different ``K`` across groups, a group longer than ``max_length``, or
            ``prefix_position_ids`` of the wrong shape.
    """
    pre, resp, mrope, num_responses = _validate(
        prefixes, responses, prefix_position_ids, max_length
    )
    device = pre[0].device
    lengths = [len(p) + sum(len(r) for r in rs) for p, rs in zip(pre, resp, strict=True)]
    rows = _assign_rows(lengths, pack_rows, max_length)
    num_rows = len(rows)
    row_length = max(sum(lengths[g] for g in row) for row in rows)

    def filled(value: int) -> torch.Tensor:
        return torch.full((num_rows, row_length), value, dtype=torch.long, device=device)

    input_ids = filled(pad_token_id)
    segment_ids = filled(-1)
    group_ids = filled(-1)
    position_shape = (num_rows, row_length) if mrope is None else (3, num_rows, row_length)
    position_ids = torch.zeros(position_shape, dtype=torch.long, device=device)

    slices: list[GroupSlices | None] = [None] * len(pre)
    for r, row in enumerate(rows):
        offset = 0
        for g in row:
            prefix = pre[g]
            prefix_end = offset + len(prefix)
            input_ids[r, offset:prefix_end] = prefix.to(device)
            segment_ids[r, offset:prefix_end] = 0
            group_ids[r, offset:prefix_end] = g
            if mrope is None:
                position_ids[r, offset:prefix_end] = torch.arange(len(prefix), device=device)
                start: int | torch.Tensor = len(prefix)
            else:
                prefix_ids = mrope[g].to(device)
                position_ids[:, r, offset:prefix_end] = prefix_ids
                start = prefix_ids.max() + 1
            spans: list[tuple[int, int]] = []
            cursor = prefix_end
            for k, response in enumerate(resp[g], start=1):
                end = cursor + len(response)
                input_ids[r, cursor:end] = response.to(device)
                segment_ids[r, cursor:end] = k
                group_ids[r, cursor:end] = g
                steps = start + torch.arange(len(response), device=device)
                if mrope is None:
                    position_ids[r, cursor:end] = steps
                else:
                    position_ids[:, r, cursor:end] = steps
                spans.append((cursor, end))
                cursor = end
            slices[g] = GroupSlices(r, offset, prefix_end, spans)
            offset = cursor

    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        segment_ids=segment_ids,
        group_ids=group_ids,
        attention_mask=_build_mask(group_ids, segment_ids),
        response_slices=[s for s in slices if s is not None],
        num_responses=num_responses,
    )


def flex_block_mask(packed: PackedBatch) -> BlockMask:
    """The FlexAttention ``BlockMask`` of ``packed``: the same rule as its boolean mask.

    Built with ``torch.nn.attention.flex_attention.create_block_mask`` for ``B = R`` rows, all
    heads, ``Q_LEN = KV_LEN = L``, on the device of ``packed``.

    Raises:
        RuntimeError: if this torch has no FlexAttention.
    """
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as error:  # pragma: no cover - torch < 2.5
        raise RuntimeError(
            f"FlexAttention is not available in torch {torch.__version__} (needs torch >= 2.5)"
        ) from error

    group_ids, segment_ids = packed.group_ids, packed.segment_ids

    def mask_mod(
        b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        group_q, group_k = group_ids[b, q_idx], group_ids[b, kv_idx]
        seg_q, seg_k = segment_ids[b, q_idx], segment_ids[b, kv_idx]
        real = (group_q >= 0) & (group_q == group_k) & (kv_idx <= q_idx)
        real = real & ((seg_k == 0) | (seg_k == seg_q))
        return real | ((group_q < 0) & (q_idx == kv_idx))

    rows, length = group_ids.shape
    return create_block_mask(
        mask_mod, B=rows, H=None, Q_LEN=length, KV_LEN=length, device=group_ids.device
    )


def model_inputs(
    packed: PackedBatch,
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments for a Hugging Face causal LM's forward on ``packed``.

    Returns ``{"input_ids": (R, L), "position_ids": (R, L) or (3, R, L), "attention_mask": ...}``.
    transformers 5.x uses a 4-D ``attention_mask`` as given (``create_causal_mask`` returns it
    unchanged), and the ``(3, R, L)`` ids are the mrope ids Qwen2-VL-style text models take.

    The mask is:

    * ``dtype is None`` (and ``attn_implementation`` ``None`` or ``"sdpa"``): the boolean
      ``(R, 1, L, L)`` mask, ``True`` = attend; for ``attn_implementation="sdpa"``.
    * ``dtype`` given: the additive ``(R, 1, L, L)`` mask, 0 where attending and
      ``torch.finfo(dtype).min`` elsewhere; ``dtype`` must be the model's dtype. Works with
      "sdpa" and is required by "eager", which adds the mask to the scores.
    * ``attn_implementation="flex_attention"``: the ``BlockMask`` of :func:`flex_block_mask`.

    Raises:
        ValueError: for ``"eager"`` without ``dtype``, or another attention implementation
            (flash attention takes no 4-D mask).
    """
    if attn_implementation is not None and attn_implementation not in (
        SUPPORTED_ATTN_IMPLEMENTATIONS
    ):
        raise ValueError(
            f"attn_implementation {attn_implementation!r} cannot take a packed 4-D mask; "
            f"use one of {SUPPORTED_ATTN_IMPLEMENTATIONS}"
        )
    mask: torch.Tensor | BlockMask
    if attn_implementation == "flex_attention":
        mask = flex_block_mask(packed)
    elif dtype is not None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        additive = torch.zeros(packed.attention_mask.shape, dtype=dtype, device=_device(packed))
        mask = additive.masked_fill(~packed.attention_mask, torch.finfo(dtype).min)
    elif attn_implementation == "eager":
        raise ValueError(
            "eager attention adds the mask to the scores: pass dtype=<the model's dtype>"
        )
    else:
        mask = packed.attention_mask
    return {
        "input_ids": packed.input_ids,
        "position_ids": packed.position_ids,
        "attention_mask": mask,
    }


def _device(packed: PackedBatch) -> torch.device:
    return packed.input_ids.device


def response_targets(
    packed: PackedBatch, *, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every token, the position whose hidden state predicts it, and the label.

    Returns:
        ``(predictor_index, labels)``, both ``(R, L)`` long. At a response token ``t``:
        ``predictor_index[r, t]`` is the last prefix position for the first token of a
        response, else ``t - 1``; ``labels[r, t]`` is the token. Elsewhere (prefix, padding)
        ``predictor_index`` is -1 and ``labels`` is ``ignore_index``::

            token      | p0 p1 p2 | a0 a1 | b0 b1 b2
            predictor  | -1 -1 -1 |  2  3 |  2  5  6
    """
    predictor = torch.full_like(packed.input_ids, -1)
    labels = torch.full_like(packed.input_ids, ignore_index)
    for row, _, prefix_end, spans in packed.response_slices:
        for start, end in spans:
            predictor[row, start] = prefix_end - 1
            predictor[row, start + 1 : end] = torch.arange(start, end - 1, device=_device(packed))
            labels[row, start:end] = packed.input_ids[row, start:end]
    return predictor, labels


def gather_response_hidden(
    hidden_states: torch.Tensor, packed: PackedBatch, *, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the hidden states that predict each response, response by response.

    Args:
        hidden_states: ``(R, L, H)``, the last hidden states of the packed forward.
        packed: the batch that was fed.
        ignore_index: label of padding.

    Returns:
        ``(hidden, labels)``: ``hidden`` is ``(G * K, Lr, H)`` and ``labels`` ``(G * K, Lr)``
        with ``Lr`` the longest response. Row ``g * K + k`` holds response ``k`` of group ``g``:
        ``hidden[i, t]`` predicts ``labels[i, t]`` (no shift), the first token being predicted by
        the last prefix position. Padding has label ``ignore_index`` (and some hidden state).
        Differentiable with respect to ``hidden_states``.
    """
    rows, length = packed.input_ids.shape
    if hidden_states.ndim != 3 or tuple(hidden_states.shape[:2]) != (rows, length):
        raise ValueError(
            f"hidden_states must have shape ({rows}, {length}, H), got {tuple(hidden_states.shape)}"
        )
    spans = [
        (row, prefix_end, start, end)
        for row, _, prefix_end, responses in packed.response_slices
        for start, end in responses
    ]
    longest = max(end - start for _, _, start, end in spans)
    row_index = torch.zeros(len(spans), longest, dtype=torch.long)
    source = torch.zeros(len(spans), longest, dtype=torch.long)
    target = torch.zeros(len(spans), longest, dtype=torch.long)
    valid = torch.zeros(len(spans), longest, dtype=torch.bool)
    for i, (row, prefix_end, start, end) in enumerate(spans):
        n = end - start
        row_index[i] = row
        source[i, 0] = prefix_end - 1
        source[i, 1:n] = torch.arange(start, end - 1)
        target[i, :n] = torch.arange(start, end)
        valid[i, :n] = True
    device = hidden_states.device
    row_index, source, target, valid = (t.to(device) for t in (row_index, source, target, valid))
    hidden = hidden_states[row_index, source]
    labels = packed.input_ids.to(device)[row_index, target].masked_fill(~valid, ignore_index)
    return hidden, labels


def unpack_response_logps(per_response_logps: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    """Reshape ``(G * K,)`` per-response values (rows of :func:`gather_response_hidden`) to
    ``(G, K)``: ``[:, 0]`` is the first response (chosen), ``[:, 1:]`` the others."""
    expected = packed.num_groups * packed.num_responses
    if tuple(per_response_logps.shape) != (expected,):
        raise ValueError(
            f"expected {expected} per-response values of shape ({expected},), "
            f"got shape {tuple(per_response_logps.shape)}"
        )
    return per_response_logps.view(packed.num_groups, packed.num_responses)


def packed_response_logps(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    packed: PackedBatch,
    *,
    ignore_index: int = -100,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Summed log-probs of every response of every group from one packed forward.

    Gathers with :func:`gather_response_hidden`, scores with
    ``povidgen.train.logps.sequence_logps(..., shift=False)`` (chunked over the vocabulary), and
    reshapes with :func:`unpack_response_logps`.

    Args:
        hidden_states: ``(R, L, H)`` last hidden states of the packed forward (after the final
            norm, before the LM head).
        lm_head_weight: ``(V, H)``, same dtype as ``hidden_states``.
        packed: the batch that was fed.
        ignore_index: label of padding.
        chunk_size: tokens projected on the vocabulary at a time (see ``sequence_logps``).

    Returns:
        ``(G, K)`` fp32 (fp64 for fp64 input): ``[g, k]`` is
        ``sum_t log p(response_k[t] | prefix_g, response_k[:t])``. Differentiable.
    """
    from povidgen.train.logps import sequence_logps

    hidden, labels = gather_response_hidden(hidden_states, packed, ignore_index=ignore_index)
    per_response = sequence_logps(
        hidden,
        lm_head_weight,
        labels,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        shift=False,
    )
    return unpack_response_logps(per_response, packed)
