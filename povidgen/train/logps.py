"""Sequence log-probs straight from the last hidden states, without the ``[B, T, V]`` logits.

A DPO step needs, for every sequence ``b``, the summed log-prob of its response tokens::

    logp[b] = sum_{t in response(b)} log softmax(h[b, t] @ W^T)[y[b, t]]

with ``h`` the final hidden states ``(B, T, H)``, ``W`` the LM-head weight ``(V, H)`` and ``y`` the
target tokens. The usual path materialises ``logits = h @ W^T`` for *every* position, in fp32:
``B * T * V * 4`` bytes (13.9 GiB above the inputs for 4 x 2048 tokens at ``V = 152064``), most of
it for prompt and image positions whose log-probs are thrown away.

:func:`sequence_logps` instead

1. selects the response positions first (``N`` of them, a quarter of ``B * T`` for a typical
   VLM pair), so the prompt and image tokens are never projected;
2. projects them in chunks of ``chunk_size`` tokens, with fp32 accumulation and fp32 results,
   so at most ``chunk_size x V`` logits exist at any time;
3. backpropagates through a custom autograd function that keeps only ``(N,)`` log-sum-exps,
   so backward memory is ``O(chunk_size x V)`` as well. The gradient of ``log softmax(z)[y]``
   with respect to the logits ``z`` is ``onehot(y) - softmax(z)``; so

   * with a **frozen LM head** (LoRA and other adapter training, POVID's set-up) the gradient
     for the hidden states, ``(onehot - p) @ W``, is computed during the forward chunks while
     the logits are at hand, and backward is a per-token rescaling: two matmuls in all;
   * with a **trainable LM head** the chunk logits are recomputed in backward and both
     ``grad_h = G @ W`` and ``grad_W += G^T @ h`` follow: four matmuls, like a checkpointed loop,
     but over response tokens only and with the softmax done in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import Tensor

from povidgen.train import _softmax_kernels

__all__ = ["SequenceLogps", "sequence_logps"]


@dataclass(frozen=True)
class SequenceLogps:
    """The full result of :func:`sequence_logps` when per-token values or metrics are asked for.

    Attributes:
        logps: ``(B,)`` fp32 sums of response-token log-probs (differentiable).
        lengths: ``(B,)`` the number of response tokens of each sequence.
        per_token: ``(B, T)`` fp32 log-prob of ``labels[b, t]`` at the position that holds it
            (0 elsewhere; differentiable), or ``None``.
        mean_logit: ``(B,)`` the mean over response tokens of the mean logit over the
            vocabulary (detached), or ``None``.
        entropy: ``(B,)`` the mean predictive entropy over response tokens (detached), or ``None``.
        token_accuracy: ``(B,)`` the fraction of response tokens that are the argmax
            (detached), or ``None``.
    """

    logps: Tensor
    lengths: Tensor
    per_token: Tensor | None = None
    mean_logit: Tensor | None = None
    entropy: Tensor | None = None
    token_accuracy: Tensor | None = None


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half and single precision, fp64 for double (so gradcheck can run)."""
    return torch.promote_types(dtype, torch.float32)


def _project(hidden: Tensor, weight: Tensor) -> Tensor:
    """``hidden @ weight.T`` as fp32 (fp64 for fp64 inputs), ``(C, H) x (V, H) -> (C, V)``.

    On CUDA with half-precision inputs the matmul writes fp32 directly (no bf16 rounding of the
    logits, no extra cast pass); elsewhere the product is cast.
    """
    if hidden.is_cuda and hidden.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.mm(hidden, weight.t(), out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch without mm(out_dtype=...)
            pass
    return torch.mm(hidden, weight.t()).to(_accumulation_dtype(hidden.dtype))


def _row_logsumexp(logits: Tensor) -> Tensor:
    """``(C, V) -> (C,)``; one fused pass on CUDA."""
    if logits.is_cuda and _softmax_kernels.AVAILABLE and logits.dtype == torch.float32:
        return _softmax_kernels.row_logsumexp(logits)
    return torch.logsumexp(logits, dim=1)


def _softmax_grad(
    logits: Tensor, lse: Tensor, upstream: Tensor, targets: Tensor, out_dtype: torch.dtype
) -> Tensor:
    """``upstream[:, None] * (onehot(targets) - softmax(logits))`` in ``out_dtype``, ``(C, V)``:
    the gradient of ``upstream * log softmax(logits)[targets]``. May overwrite ``logits``."""
    if logits.is_cuda and _softmax_kernels.AVAILABLE and logits.dtype == torch.float32:
        return _softmax_kernels.softmax_grad(logits, lse, upstream, targets, out_dtype)
    logits.sub_(lse[:, None]).exp_().mul_(-upstream[:, None])
    logits.scatter_add_(1, targets[:, None], upstream[:, None])
    return logits.to(out_dtype)


class _ChunkedTokenLogps(torch.autograd.Function):
    """``(N, H), (V, H), (N,) -> (N,)``: ``log softmax(h @ W^T)[y]`` per token, chunked."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        chunk_size: int,
        want_grad: bool,
        stats: dict[str, Tensor] | None,
    ) -> Tensor:
        n = hidden.shape[0]
        acc = _accumulation_dtype(hidden.dtype)
        out = torch.empty(n, dtype=acc, device=hidden.device)
        lse_all = torch.empty(n, dtype=acc, device=hidden.device)
        # with a frozen head the hidden-state gradient is cheapest while the logits are at hand
        eager_grad = want_grad and ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]
        unit_grad = (
            torch.empty(hidden.shape, dtype=acc, device=hidden.device) if eager_grad else None
        )
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            y = targets[start:end]
            logits = _project(hidden[start:end], weight)
            lse = _row_logsumexp(logits)
            lse_all[start:end] = lse
            out[start:end] = logits.gather(1, y[:, None]).squeeze(1) - lse
            if stats is not None:
                stats["mean_logit"][start:end] = logits.mean(dim=1)
                stats["correct"][start:end] = (logits.argmax(dim=1) == y).to(acc)
                # H = -sum p log p = lse - sum p z
                probs = (logits - lse[:, None]).exp_()
                stats["entropy"][start:end] = lse - (probs * logits).sum(dim=1)
                del probs
            if unit_grad is not None:
                ones = torch.ones_like(lse)
                grad_logits = _softmax_grad(logits, lse, ones, y, weight.dtype)
                del logits  # free the fp32 chunk before the matmul allocates its output
                unit_grad[start:end] = torch.mm(grad_logits, weight).to(acc)
        ctx.chunk_size = chunk_size
        ctx.eager = unit_grad is not None
        ctx.hidden_dtype = hidden.dtype
        if unit_grad is not None:
            ctx.save_for_backward(unit_grad)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse_all)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad_out = grad_out.to(_accumulation_dtype(ctx.hidden_dtype)).contiguous()
        if ctx.eager:
            (unit_grad,) = ctx.saved_tensors
            grad_hidden = (unit_grad * grad_out[:, None]).to(ctx.hidden_dtype)
            return grad_hidden, None, None, None, None, None
        hidden, weight, targets, lse_all = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        chunk = ctx.chunk_size
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            h = hidden[start:end]
            logits = _project(h, weight)
            grad_logits = _softmax_grad(
                logits, lse_all[start:end], grad_out[start:end], targets[start:end], weight.dtype
            )
            del logits
            if grad_hidden is not None:
                grad_hidden[start:end] = torch.mm(grad_logits, weight)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), h)
        return grad_hidden, grad_weight, None, None, None, None


def _response_positions(
    hidden_states: Tensor, lm_head_weight: Tensor, labels: Tensor, ignore_index: int, shift: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate inputs; return the selected hidden rows ``(N, H)``, targets ``(N,)``, and the
    (batch, position-in-labels) index of each."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (B, T, H), got shape {tuple(hidden_states.shape)}")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden_states.shape[2]:
        raise ValueError(
            f"lm_head_weight must be (V, H={hidden_states.shape[2]}), "
            f"got shape {tuple(lm_head_weight.shape)}"
        )
    if labels.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"labels must be (B, T) = {tuple(hidden_states.shape[:2])}, got {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if not hidden_states.is_floating_point() or hidden_states.dtype != lm_head_weight.dtype:
        raise ValueError(
            "hidden_states and lm_head_weight must be floating tensors of one dtype, got "
            f"{hidden_states.dtype} and {lm_head_weight.dtype}"
        )
    hidden = hidden_states[:, :-1] if shift else hidden_states
    targets = labels[:, 1:] if shift else labels
    rows, cols = (targets != ignore_index).nonzero(as_tuple=True)
    selected_targets = targets[rows, cols].long()
    if selected_targets.numel() and (
        int(selected_targets.min()) < 0 or int(selected_targets.max()) >= lm_head_weight.shape[0]
    ):
        raise ValueError(
            f"labels hold token ids outside [0, {lm_head_weight.shape[0]}) other than "
            f"ignore_index={ignore_index}"
        )
    return hidden[rows, cols], selected_targets, rows, cols + (1 if shift else 0)


@overload
def sequence_logps(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = ...,
    chunk_size: int = ...,
    shift: bool = ...,
    return_per_token: Literal[False] = ...,
    return_metrics: Literal[False] = ...,
) -> Tensor: ...


@overload
def sequence_logps(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = ...,
    chunk_size: int = ...,
    shift: bool = ...,
    return_per_token: Literal[True],
    return_metrics: bool = ...,
) -> SequenceLogps: ...


@overload
def sequence_logps(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = ...,
    chunk_size: int = ...,
    shift: bool = ...,
    return_per_token: bool = ...,
    return_metrics: Literal[True],
) -> SequenceLogps: ...


@overload
def sequence_logps(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = ...,
    chunk_size: int = ...,
    shift: bool = ...,
    return_per_token: bool = ...,
    return_metrics: bool = ...,
) -> Tensor | SequenceLogps: ...


def sequence_logps(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    chunk_size: int = 1024,
    shift: bool = True,
    return_per_token: bool = False,
    return_metrics: bool = False,
) -> Tensor | SequenceLogps:
    """Per-sequence sums of response-token log-probs, from hidden states and the LM head.

    ``logp[b] = sum_t [labels[b, t] != ignore_index] * log softmax(h[b, t'] @ W^T)[labels[b, t]]``

    Args:
        hidden_states: ``(B, T, H)``, the final hidden states (after the last norm).
        lm_head_weight: ``(V, H)``, the output projection (``model.lm_head.weight``); same dtype.
        labels: ``(B, T)`` token ids; prompt, image and padding positions hold ``ignore_index``.
        ignore_index: the label that marks positions to skip.
        chunk_size: tokens projected at a time; memory is ``O(chunk_size x V)`` fp32.
        shift: ``True`` (Hugging Face's convention): ``hidden[:, t]`` predicts ``labels[:, t + 1]``,
            so ``labels`` can be the input ids with non-response positions masked. ``False``:
            ``hidden[:, t]`` predicts ``labels[:, t]`` (already aligned).
        return_per_token: also return the ``(B, T)`` per-token log-probs.
        return_metrics: also return mean logit, entropy and token accuracy per sequence,
            computed on the same pass.

    Returns:
        ``(B,)`` fp32 log-probs, or a :class:`SequenceLogps` when ``return_per_token`` or
        ``return_metrics`` is set. Differentiable with respect to ``hidden_states`` and
        ``lm_head_weight``; sequences with no response token get 0.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    hidden, targets, rows, cols = _response_positions(
        hidden_states, lm_head_weight, labels, ignore_index, shift
    )
    batch = hidden_states.shape[0]
    device = hidden_states.device
    acc = _accumulation_dtype(hidden_states.dtype)
    stats: dict[str, Tensor] | None = None
    if return_metrics:
        stats = {
            k: torch.zeros(hidden.shape[0], dtype=acc, device=device)
            for k in ("mean_logit", "entropy", "correct")
        }
    want_grad = torch.is_grad_enabled() and (
        hidden_states.requires_grad or lm_head_weight.requires_grad
    )
    token_logps: Tensor = _ChunkedTokenLogps.apply(  # type: ignore[no-untyped-call]
        hidden, lm_head_weight, targets, chunk_size, want_grad, stats
    )
    logps = torch.zeros(batch, dtype=acc, device=device).index_add(0, rows, token_logps)
    if not (return_per_token or return_metrics):
        return logps
    lengths = torch.bincount(rows, minlength=batch)
    per_token = None
    if return_per_token:
        per_token = torch.zeros(labels.shape, dtype=acc, device=device).index_put(
            (rows, cols), token_logps
        )
    result = SequenceLogps(logps=logps, lengths=lengths, per_token=per_token)
    if stats is None:
        return result
    denominator = lengths.clamp(min=1).to(acc)

    def per_sequence(values: Tensor) -> Tensor:
        summed = torch.zeros(batch, dtype=acc, device=device).index_add(0, rows, values)
        return summed / denominator

    return SequenceLogps(
        logps=logps,
        lengths=lengths,
        per_token=per_token,
        mean_logit=per_sequence(stats["mean_logit"]),
        entropy=per_sequence(stats["entropy"]),
        token_accuracy=per_sequence(stats["correct"]),
    )
