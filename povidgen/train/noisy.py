"""POVID's stage-2 rejected score: the model's own argmax answer under a distorted image.

Nothing is sampled. The chosen answer ``y_w`` is teacher-forced twice, once with the clean image
and once with the noisy one. At every response position ``t`` the rejected token is the argmax
under the noisy image, and its score is read under the clean image::

    yhat_t = argmax_v pi(v | noisy image, prompt, y_w,<t)          (no gradient)
    s      = sum_t log pi(yhat_t | clean image, prompt, y_w,<t)     (differentiable)

The policy and the reference each compute their own ``s`` (with their own argmax tokens).
Positions where ``yhat_t`` equals the gold token are counted by the official code
(``overlap="keep"``); an early version took the second-best token there (``"second_best"``);
``"mask"`` drops them from the sum.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from povidgen.train.logps import sequence_logps

__all__ = ["noisy_logps", "noisy_tokens"]

Overlap = Literal["keep", "second_best", "mask"]
_OVERLAPS = ("keep", "second_best", "mask")


@torch.no_grad()
def noisy_tokens(
    noisy: Tensor,
    labels: Tensor,
    *,
    lm_head_weight: Tensor | None = None,
    overlap: Overlap = "keep",
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: int = 1024,
) -> Tensor:
    """The rejected labels of POVID stage 2: ``labels`` with every response token replaced by
    the argmax under the noisy image.

    Args:
        noisy: ``(B, T, V)`` logits, or ``(B, T, H)`` hidden states when ``lm_head_weight``
            ``(V, H)`` is given (then only response positions are projected, in chunks).
        labels: ``(B, T)`` the chosen answer's labels, ``ignore_index`` outside the response.
        overlap: what to do where the argmax is the gold token (see the module docstring).
        shift: Hugging Face's convention, as in :func:`povidgen.train.sequence_logps`.

    Returns:
        ``(B, T)`` labels in the same layout as ``labels`` (``ignore_index`` where masked).
    """
    if overlap not in _OVERLAPS:
        raise ValueError(f"overlap must be one of {_OVERLAPS}, got {overlap!r}")
    if noisy.shape[:2] != labels.shape:
        raise ValueError(
            f"noisy must be (B, T, ...) with (B, T) = {tuple(labels.shape)}, "
            f"got {tuple(noisy.shape)}"
        )
    predictors = noisy[:, :-1] if shift else noisy
    targets = labels[:, 1:] if shift else labels
    rows, cols = (targets != ignore_index).nonzero(as_tuple=True)
    selected = predictors[rows, cols]  # (N, V) or (N, H)
    k = 1 if overlap == "keep" else 2
    top = torch.empty(selected.shape[0], k, dtype=torch.long, device=noisy.device)
    for start in range(0, selected.shape[0], chunk_size):
        chunk = selected[start : start + chunk_size]
        if lm_head_weight is not None:
            chunk = chunk @ lm_head_weight.t()
        top[start : start + chunk_size] = chunk.topk(k, dim=-1).indices
    gold = targets[rows, cols].long()
    tokens = top[:, 0]
    if overlap == "second_best":
        tokens = torch.where(tokens == gold, top[:, 1], tokens)
    elif overlap == "mask":
        tokens = torch.where(tokens == gold, torch.full_like(tokens, ignore_index), tokens)
    result = labels.clone()
    offset = 1 if shift else 0
    result[rows, cols + offset] = tokens.to(labels.dtype)
    return result


def noisy_logps(
    clean_hidden_states: Tensor,
    noisy_hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    overlap: Overlap = "keep",
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: int = 1024,
) -> Tensor:
    """POVID's noisy-image rejected score ``s`` per sequence, ``(B,)`` fp32.

    Args:
        clean_hidden_states: ``(B, T, H)`` last hidden states with the clean image (the graph is
            kept through them).
        noisy_hidden_states: ``(B, T, H)`` the same sequence with the noisy image (no graph is
            kept: compute it under ``torch.no_grad()``).
        lm_head_weight: ``(V, H)``.
        labels: ``(B, T)`` the chosen answer's labels.

    The score is ``sequence_logps(clean, W, noisy_tokens(noisy, labels))``: never a full
    ``[B, T, V]`` logits tensor, for either stream.
    """
    rejected = noisy_tokens(
        noisy_hidden_states.detach(),
        labels,
        lm_head_weight=lm_head_weight.detach(),
        overlap=overlap,
        ignore_index=ignore_index,
        shift=shift,
        chunk_size=chunk_size,
    )
    return sequence_logps(
        clean_hidden_states,
        lm_head_weight,
        rejected,
        ignore_index=ignore_index,
        shift=shift,
        chunk_size=chunk_size,
    )
