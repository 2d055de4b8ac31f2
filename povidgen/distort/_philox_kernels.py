"""The CUDA side of :mod:`povidgen.distort.philox`: Philox4x64-10, Box-Muller and the affine
``signal * x + noise * eps`` with an overflow policy, fused in one Triton kernel.

Each program takes ``block`` Philox blocks of one item; block ``j`` (counter ``j + 1``, key
``(seed, 0)``) yields four 64-bit words, i.e. the eight normals ``z[8j .. 8j + 7]``.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    AVAILABLE = False
else:
    AVAILABLE = True

__all__ = ["AVAILABLE", "launch"]

_BLOCKS_PER_PROGRAM = 256  # Philox blocks per program; each block gives 8 normals
# The approximate-math variant needs NVIDIA PTX; the interpreter and other backends get the
# precise one (the first failed launch switches it off for the process).
_FAST = os.environ.get("TRITON_INTERPRET", "0") != "1"


def launch(
    source: torch.Tensor,
    out: torch.Tensor,
    seeds: list[int],
    signal: float,
    noise: float,
    *,
    mode: int,
) -> None:
    """Fill ``out`` ``(B, n)`` with ``signal * source + noise * eps`` (``source is out``: noise
    only); ``mode`` 0 none, 1 clamp to ``[0, 1]``, 2 8-bit wrap."""
    batch, n = out.shape
    seed_tensor = torch.tensor(np.array(seeds, dtype=np.uint64).view(np.int64), device=out.device)
    blocks = (n + 7) // 8
    grid = (triton.cdiv(blocks, _BLOCKS_PER_PROGRAM), batch)
    global _FAST
    while True:
        try:
            _philox_affine_kernel[grid](
                source,
                out,
                seed_tensor,
                n,
                signal,
                noise,
                use_source=source is not out,
                mode=mode,
                fast=_FAST,
                block=_BLOCKS_PER_PROGRAM,
            )
            return
        except Exception:  # a backend without the PTX approximations: use the precise math
            if not _FAST:
                raise
            _FAST = False


if AVAILABLE:

    @triton.jit
    def _philox4x64(c0, c1, c2, c3, k0, k1):
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

    @triton.jit
    def _box_muller(word, fast: tl.constexpr):
        """One 64-bit word -> (r cos, r sin) from its low and high 32 bits.

        With ``fast`` the transcendental functions are the GPU's approximate instructions
        (``lg2.approx``, ``sqrt.approx``, ``sin.approx``, ``cos.approx``: a few 1e-7 of absolute
        error on these ranges), on an angle moved to ``[-pi, pi)`` where they are accurate:
        ``cos(a) = -cos(a - pi)``, ``sin(a) = -sin(a - pi)``.
        """
        lo = (word & 0xFFFFFFFF).to(tl.float32)
        hi = (word >> 32).to(tl.float32)
        u1 = (lo + 1.0) * 2.3283064365386963e-10
        if fast:
            log2 = tl.inline_asm_elementwise(
                "lg2.approx.f32 $0, $1;", "=r,r", [u1], dtype=tl.float32, is_pure=True, pack=1
            )
            radius = tl.sqrt(-1.3862943611198906 * log2)  # -2 ln(u1) = -2 ln(2) log2(u1)
            centred = (hi * 2.3283064365386963e-10 - 0.5) * 6.283185307179586
            cosine = tl.inline_asm_elementwise(
                "cos.approx.f32 $0, $1;", "=r,r", [centred], dtype=tl.float32, is_pure=True, pack=1
            )
            sine = tl.inline_asm_elementwise(
                "sin.approx.f32 $0, $1;", "=r,r", [centred], dtype=tl.float32, is_pure=True, pack=1
            )
            return -radius * cosine, -radius * sine
        radius = tl.sqrt(-2.0 * tl.log(u1))
        angle = hi * 2.3283064365386963e-10 * 6.283185307179586
        return radius * tl.cos(angle), radius * tl.sin(angle)

    @triton.jit
    def _philox_affine_kernel(
        source_ptr,
        out_ptr,
        seed_ptr,
        n,
        signal,
        noise,
        use_source: tl.constexpr,
        mode: tl.constexpr,
        fast: tl.constexpr,
        block: tl.constexpr,
    ):
        item = tl.program_id(1)
        blocks = tl.program_id(0).to(tl.uint64) * block + tl.arange(0, block).to(tl.uint64)
        key = tl.load(seed_ptr + item).to(tl.uint64, bitcast=True)
        zero = tl.zeros([block], dtype=tl.uint64)
        w0, w1, w2, w3 = _philox4x64(blocks + 1, zero, zero, zero, zero + key, zero)
        c0, s0 = _box_muller(w0, fast)
        c1, s1 = _box_muller(w1, fast)
        c2, s2 = _box_muller(w2, fast)
        c3, s3 = _box_muller(w3, fast)
        # interleave to [block, word, half] so the 8 normals of a Philox block are contiguous
        # and a warp's loads and stores are coalesced: z[8 j + 2 word + half]
        cosines = tl.join(tl.join(c0, c2), tl.join(c1, c3))
        sines = tl.join(tl.join(s0, s2), tl.join(s1, s3))
        z = tl.reshape(tl.join(cosines, sines), [block * 8])
        position = tl.program_id(0).to(tl.int64) * (block * 8) + tl.arange(0, block * 8)
        inside = position < n
        base = item.to(tl.int64) * n
        if use_source:
            x = tl.load(source_ptr + base + position, mask=inside, other=0.0)
            y = signal * x + noise * z
        else:
            y = z
        if mode == 1:
            y = tl.minimum(tl.maximum(y, 0.0), 1.0)
        if mode == 2:
            scaled = y * 255.0
            whole = tl.where(scaled < 0, -tl.floor(-scaled), tl.floor(scaled))
            y = (whole - 256.0 * tl.floor(whole / 256.0)) / 255.0
        tl.store(out_ptr + base + position, y, mask=inside)
