"""Seeded Gaussian noise that is the same on every device: Philox4x64-10 plus Box-Muller.

Distorters promise that a seed gives the same image on the PIL path and the tensor path, on
the CPU and on a GPU, one image at a time or in a batch. torch's generators cannot: the CPU and
CUDA generators are different algorithms, and a batch drawn from one generator depends on its
neighbours. So the noise of an item with seed ``s`` and ``n`` values is defined as:

* ``raw[k]``, ``k < ceil(n / 2)``: the Philox4x64-10 stream with key ``(s, 0)``, i.e. numpy's
  ``np.random.Philox(key=s).random_raw()`` (block ``b`` is counter ``b + 1``, four words each);
* ``u1 = (lo32(raw[k]) + 1) * 2^-32``, ``u2 = hi32(raw[k]) * 2^-32``, in float32;
* ``z[2k] = r cos(2 pi u2)``, ``z[2k + 1] = r sin(2 pi u2)`` with ``r = sqrt(-2 log u1)``
  (Box-Muller), for ``z`` in the item's C-order (channel, row, column).

On the CPU the stream comes from numpy's C implementation; on CUDA a Triton kernel computes it
in place, fused with the use of the noise, so nothing is copied between devices. Integer
streams are identical; the float transforms differ by a few ulps between libms.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from povidgen.distort import _philox_kernels
from povidgen.errors import DistortionError

TRITON = _philox_kernels.AVAILABLE

__all__ = ["TRITON", "affine_noise", "check_seeds", "gaussian_noise"]

_TWO_PI = 6.283185307179586
_TO_UNIT = 2.3283064365386963e-10  # 2^-32
_SEED_LIMIT = 2**64


def check_seeds(seeds: Sequence[int] | torch.Tensor, count: int) -> list[int]:
    """Validate per-item seeds: ``count`` ints in ``[0, 2^64)``."""
    values = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    if len(values) != count:
        raise DistortionError(f"expected {count} seeds, one per image, got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DistortionError(f"seeds must be ints, got {type(value).__name__}")
        if not 0 <= value < _SEED_LIMIT:
            raise DistortionError(f"seeds must be in [0, 2**64), got {value}")
    return values


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="philox")


def _cpu_noise(seeds: list[int], n: int, scale: float = 1.0) -> torch.Tensor:
    """``(B, n)`` float32 normals times ``scale``, from numpy's Philox on the CPU."""
    words = (n + 1) // 2
    raw = np.empty((len(seeds), words), dtype=np.uint64)

    def fill(row: int) -> None:
        raw[row] = np.random.Philox(key=seeds[row]).random_raw(words)

    if len(seeds) > 1 and words >= 4096:
        # numpy draws each stream in C with the GIL released, so threads run them in parallel
        list(_pool().map(fill, range(len(seeds))))
    else:
        for row in range(len(seeds)):
            fill(row)
    if sys.byteorder == "little":
        # a uint64 word is (lo32, hi32) in memory: one conversion pass gives both halves
        halves = torch.from_numpy(raw.view(np.uint32)).view(len(seeds), words, 2).to(torch.float32)
        lo, hi = halves[..., 0], halves[..., 1]
    else:
        signed = torch.from_numpy(raw.view(np.int64))
        lo = (signed & 0xFFFFFFFF).to(torch.float32)
        hi = ((signed >> 32) & 0xFFFFFFFF).to(torch.float32)
    radius = lo.add(1.0).mul_(_TO_UNIT).log_().mul_(-2.0).sqrt_().mul_(scale)
    angle = hi.mul(_TO_UNIT * _TWO_PI)
    out = torch.empty((len(seeds), words, 2), dtype=torch.float32)
    torch.cos(angle, out=out[..., 0]).mul_(radius)
    torch.sin(angle, out=out[..., 1]).mul_(radius)
    return out.view(len(seeds), 2 * words)[:, :n]


def gaussian_noise(
    seeds: Sequence[int] | torch.Tensor, shape: Sequence[int], *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(B, *shape)`` float32 standard normal noise, item ``i`` drawn from ``seeds[i]``."""
    seed_list = check_seeds(seeds, len(seeds))
    n = math.prod(shape)
    device = torch.device(device)
    if device.type == "cuda" and TRITON:
        out = torch.empty((len(seed_list), n), dtype=torch.float32, device=device)
        _philox_kernels.launch(out, out, seed_list, 0.0, 1.0, mode=0)
        return out.reshape(len(seed_list), *shape)
    return _cpu_noise(seed_list, n).reshape(len(seed_list), *shape).to(device)


def affine_noise(
    images: torch.Tensor, seeds: Sequence[int], signal: float, noise: float, *, mode: int = 0
) -> torch.Tensor:
    """``signal * x + noise * eps`` for a ``(B, ...)`` float32 batch, ``eps`` per item from its
    seed; ``mode`` 0 leaves the result as it is, 1 clamps to ``[0, 1]``, 2 wraps like an
    unclamped 8-bit cast (``trunc(255 y) mod 256 / 255``). Fused in one kernel on CUDA."""
    batch = images.shape[0]
    flat = images.reshape(batch, -1)
    if images.is_cuda and TRITON:
        out = torch.empty_like(flat)
        _philox_kernels.launch(flat.contiguous(), out, list(seeds), signal, noise, mode=mode)
        return out.reshape(images.shape)
    out = _cpu_noise(list(seeds), flat.shape[1], noise).to(images.device)
    out.add_(flat, alpha=signal)
    if mode == 1:
        out.clamp_(0.0, 1.0)
    elif mode == 2:
        out = torch.remainder(torch.trunc(out * 255.0), 256.0).div_(255.0)
    return out.reshape(images.shape)
