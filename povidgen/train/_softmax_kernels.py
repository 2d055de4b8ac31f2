"""Fused row-softmax kernels for :mod:`povidgen.train.logps` (CUDA, Triton).

Two passes over a chunk's fp32 logits ``z`` ``(C, V)`` replace chains of elementwise torch ops:

* :func:`row_logsumexp`: ``lse[c] = log sum_v exp(z[c, v])``, an online max/sum in one read;
* :func:`softmax_grad`: ``G[c, v] = g[c] * ([v == y[c]] - exp(z[c, v] - lse[c]))``, one read of
  fp32 and one write in the matmul dtype (the gradient of ``g * log softmax(z)[y]``).

Each torch op of the unfused form reads and writes the whole ``(C, V)`` fp32 tensor; at
``V = 152064`` those passes cost as much as a third of the matmuls around them.
:data:`AVAILABLE` is false without Triton; callers then use the torch ops.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    AVAILABLE = False
else:
    AVAILABLE = True

__all__ = ["AVAILABLE", "row_logsumexp", "softmax_grad"]

_LSE_BLOCK = 4096
_GRAD_BLOCK = 2048


if AVAILABLE:

    @triton.jit  # type: ignore[misc]
    def _row_logsumexp_kernel(x_ptr, out_ptr, n_cols, stride, block: tl.constexpr):  # type: ignore[no-untyped-def]
        row = tl.program_id(0).to(tl.int64)
        base = x_ptr + row * stride
        running_max = tl.full([1], float("-inf"), dtype=tl.float32)
        running_sum = tl.zeros([1], dtype=tl.float32)
        for start in range(0, n_cols, block):
            cols = start + tl.arange(0, block)
            x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf"))
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
                tl.exp(x - new_max), axis=0
            )
            running_max = new_max
        tl.store(out_ptr + row + tl.arange(0, 1), running_max + tl.log(running_sum))

    @triton.jit  # type: ignore[misc]
    def _softmax_grad_kernel(  # type: ignore[no-untyped-def]
        x_ptr,
        lse_ptr,
        g_ptr,
        target_ptr,
        out_ptr,
        n_cols,
        stride_x,
        stride_out,
        block: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * block + tl.arange(0, block)
        in_row = cols < n_cols
        x = tl.load(x_ptr + row * stride_x + cols, mask=in_row, other=0.0)
        lse = tl.load(lse_ptr + row)
        g = tl.load(g_ptr + row)
        target = tl.load(target_ptr + row)
        onehot = tl.where(cols == target, 1.0, 0.0)
        grad = g * (onehot - tl.exp(x - lse))
        tl.store(
            out_ptr + row * stride_out + cols,
            grad.to(out_ptr.dtype.element_ty),
            mask=in_row,
        )


def row_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """``(C, V)`` fp32, last dimension contiguous -> ``(C,)`` fp32 log-sum-exp per row."""
    out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    _row_logsumexp_kernel[(logits.shape[0],)](
        logits, out, logits.shape[1], logits.stride(0), block=_LSE_BLOCK, num_warps=8
    )
    return out


def softmax_grad(
    logits: torch.Tensor,
    lse: torch.Tensor,
    upstream: torch.Tensor,
    targets: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``upstream[:, None] * (onehot(targets) - softmax(logits))`` as ``out_dtype`` ``(C, V)``.

    ``logits`` ``(C, V)`` fp32; ``lse``, ``upstream`` ``(C,)`` fp32; ``targets`` ``(C,)`` int64.
    """
    out = torch.empty(logits.shape, dtype=out_dtype, device=logits.device)
    grid = (logits.shape[0], triton.cdiv(logits.shape[1], _GRAD_BLOCK))
    _softmax_grad_kernel[grid](
        logits,
        lse.contiguous(),
        upstream.contiguous(),
        targets.contiguous(),
        out,
        logits.shape[1],
        logits.stride(0),
        out.stride(0),
        block=_GRAD_BLOCK,
        num_warps=8,
    )
    return out
