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

import math
from collections.abc import Sequence

import numpy as np
import torch

from povidgen.errors import DistortionError

try:
    import triton
    import triton.language as tl
except ImportError:
    TRITON = False
else:
    TRITON = True

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


def _box_muller(raw: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, m)`` int64 words -> ``(B, n)`` float32 normals, ``n <= 2 m``."""
    lo = (raw & 0xFFFFFFFF).to(torch.float32)
    hi = ((raw >> 32) & 0xFFFFFFFF).to(torch.float32)
    radius = lo.add_(1.0).mul_(_TO_UNIT).log_().mul_(-2.0).sqrt_()
    angle = hi.mul_(_TO_UNIT).mul_(_TWO_PI)
    normals = torch.stack([radius * torch.cos(angle), radius.mul_(torch.sin(angle))], dim=-1)
    return normals.reshape(raw.shape[0], -1)[:, :n]


def _cpu_noise(seeds: list[int], n: int) -> torch.Tensor:
    words = (n + 1) // 2
    raw = np.empty((len(seeds), words), dtype=np.uint64)
    for row, seed in enumerate(seeds):  # numpy draws each stream in C; the rest is batched
        raw[row] = np.random.Philox(key=seed).random_raw(words)
    return _box_muller(torch.from_numpy(raw.view(np.int64)), n)


def gaussian_noise(
    seeds: Sequence[int] | torch.Tensor, shape: Sequence[int], *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(B, *shape)`` float32 standard normal noise, item ``i`` drawn from ``seeds[i]``."""
    seed_list = check_seeds(seeds, len(seeds))
    n = math.prod(shape)
    device = torch.device(device)
    if device.type == "cuda" and TRITON:
        out = torch.empty((len(seed_list), n), dtype=torch.float32, device=device)
        _launch(out, out, seed_list, 0.0, 1.0, mode=0)
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
        _launch(flat.contiguous(), out, list(seeds), signal, noise, mode=mode)
        return out.reshape(images.shape)
    eps = _cpu_noise(list(seeds), flat.shape[1]).to(images.device)
    out = eps.mul_(noise).add_(flat, alpha=signal)
    if mode == 1:
        out.clamp_(0.0, 1.0)
    elif mode == 2:
        out = torch.remainder(torch.trunc(out * 255.0), 256.0).div_(255.0)
    return out.reshape(images.shape)


_BLOCKS_PER_PROGRAM = 256  # Philox blocks per program; each block gives 8 normals


def _launch(
    source: torch.Tensor, out: torch.Tensor, seeds: list[int], signal: float, noise: float, *, mode: int
) -> None:
    batch, n = out.shape
    seed_tensor = torch.tensor(
        np.array(seeds, dtype=np.uint64).view(np.int64), device=out.device
    )
    blocks = (n + 7) // 8
    grid = (triton.cdiv(blocks, _BLOCKS_PER_PROGRAM), batch)
    _philox_affine_kernel[grid](
        source,
        out,
        seed_tensor,
        n,
        signal,
        noise,
        USE_SOURCE=source is not out,
        MODE=mode,
        BLOCK=_BLOCKS_PER_PROGRAM,
    )


if TRITON:

    @triton.jit  # type: ignore[misc]
    def _philox4x64(c0, c1, c2, c3, k0, k1):  # type: ignore[no-untyped-def]
        m0 = tl.full(c0.shape, 0xD2E7470EE14C6C93, tl.uint64)
        m1 = tl.full(c0.shape, 0xCA5A826395121157, tl.uint64)
        for _ in tl.static_range(10):
            hi0 = tl.umulhi(m0, c0)
            lo0 = m0 * c0
            hi1 = tl.umulhi(m1, c2)
            lo1 = m1 * c2
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = k0 + 0x9E3779B97F4A7C15
            k1 = k1 + 0xBB67AE8584CAA73B
        return c0, c1, c2, c3

    @triton.jit  # type: ignore[misc]
    def _emit(source_ptr, out_ptr, base, index, word, n, signal, noise, USE_SOURCE: tl.constexpr, MODE: tl.constexpr):  # type: ignore[no-untyped-def]
        lo = (word & 0xFFFFFFFF).to(tl.float32)
        hi = (word >> 32).to(tl.float32)
        radius = tl.sqrt(-2.0 * tl.log((lo + 1.0) * 2.3283064365386963e-10))
        angle = hi * 2.3283064365386963e-10 * 6.283185307179586
        for half in tl.static_range(2):
            if half == 0:
                z = radius * tl.cos(angle)
            else:
                z = radius * tl.sin(angle)
            position = index + half
            inside = position < n
            if USE_SOURCE:
                x = tl.load(source_ptr + base + position, mask=inside, other=0.0)
                y = signal * x + noise * z
            else:
                y = z
            if MODE == 1:
                y = tl.minimum(tl.maximum(y, 0.0), 1.0)
            if MODE == 2:
                scaled = y * 255.0
                whole = tl.where(scaled < 0, -tl.floor(-scaled), tl.floor(scaled))
                y = (whole - 256.0 * tl.floor(whole / 256.0)) / 255.0
            tl.store(out_ptr + base + position, y, mask=inside)

    @triton.jit  # type: ignore[misc]
    def _philox_affine_kernel(source_ptr, out_ptr, seed_ptr, n, signal, noise, USE_SOURCE: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        item = tl.program_id(1)
        blocks = tl.program_id(0).to(tl.uint64) * BLOCK + tl.arange(0, BLOCK).to(tl.uint64)
        key = tl.load(seed_ptr + item).to(tl.uint64, bitcast=True)
        zero = tl.zeros([BLOCK], dtype=tl.uint64)
        w0, w1, w2, w3 = _philox4x64(blocks + 1, zero, zero, zero, zero + key, zero)
        base = item.to(tl.int64) * n
        first = (blocks * 8).to(tl.int64)
        _emit(source_ptr, out_ptr, base, first, w0, n, signal, noise, USE_SOURCE, MODE)
        _emit(source_ptr, out_ptr, base, first + 2, w1, n, signal, noise, USE_SOURCE, MODE)
        _emit(source_ptr, out_ptr, base, first + 4, w2, n, signal, noise, USE_SOURCE, MODE)
        _emit(source_ptr, out_ptr, base, first + 6, w3, n, signal, noise, USE_SOURCE, MODE)
