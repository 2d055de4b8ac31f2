"""POVID's image distortion: the closed-form forward diffusion process.

For a clean image ``x_0`` and step ``t`` (0-based) of a ``T``-step schedule with betas
``beta_s``::

    abar_t = prod_{s <= t} (1 - beta_s)
    x_t    = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps,      eps ~ N(0, I)

POVID uses ``T = 1000`` sigmoid betas,
``beta = sigmoid(linspace(-6, 6, T)) * (5e-3 - 1e-5) + 1e-5``, and ``t = 500``, so
``sqrt(abar) = 0.8630`` and ``sqrt(1 - abar) = 0.5052``. The noise is added to the raw image
at native resolution (``space="pixel"``, values in ``[0, 1]``), before any square padding or
CLIP resize/normalise. ``space="normalized"`` adds it to an already preprocessed tensor instead
(what some trainers do after the processor).

In pixel space ``x_t`` leaves ``[0, 1]`` (about a third of the values at ``t = 500``). The
official code turns it back into 8-bit pixels with ``(x * 255).byte()``, which truncates towards
zero and wraps modulo 256: ``overflow="wrap"`` reproduces that bit for bit (for every input
kind, as ``trunc(255 x) mod 256 / 255``). ``overflow="clamp"`` (the default) clips to ``[0, 1]``.

The noise ``eps`` is povidgen's device-independent Philox noise (:mod:`povidgen.distort.philox`);
on CUDA the whole expression, noise included, is one fused kernel.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch

from povidgen.distort.base import Distorter, pick
from povidgen.distort.philox import affine_noise

__all__ = ["SCHEDULES", "DiffusionNoise", "alphas_cumprod", "sigmoid_schedule"]

Schedule = Literal["sigmoid", "linear", "cosine"]
Space = Literal["pixel", "normalized"]
Overflow = Literal["clamp", "wrap", "none"]
SCHEDULES: tuple[str, ...] = ("sigmoid", "linear", "cosine")
_OVERFLOW_MODES = {"none": 0, "clamp": 1, "wrap": 2}


@functools.cache
def sigmoid_schedule(num_steps: int = 1000) -> tuple[npt.NDArray[np.float64], ...]:
    """POVID's sigmoid beta schedule and its cumulative products, in float64.

    Returns ``(betas, alphas_cumprod)``, each of shape ``(num_steps,)``.
    """
    betas = _betas("sigmoid", num_steps)
    return betas, alphas_cumprod("sigmoid", num_steps)


def _betas(schedule: str, num_steps: int) -> npt.NDArray[np.float64]:
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if schedule == "sigmoid":
        # POVID / VCD: sigmoid(linspace(-6, 6, T)) * (5e-3 - 1e-5) + 1e-5
        ramp = np.linspace(-6.0, 6.0, num_steps)
        sigmoid: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-ramp))
        return sigmoid * (5e-3 - 1e-5) + 1e-5
    if schedule == "linear":
        # DDPM (Ho et al., 2020): beta from 1e-4 to 0.02
        return np.linspace(1e-4, 0.02, num_steps, dtype=np.float64)
    if schedule == "cosine":
        # Improved DDPM (Nichol & Dhariwal, 2021): abar(t) = cos^2(((t / T + s) / (1 + s)) pi / 2)
        s = 0.008
        grid = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        f: npt.NDArray[np.float64] = np.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
        return np.minimum(1.0 - f[1:] / f[:-1], 0.999)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


@functools.cache
def alphas_cumprod(schedule: str = "sigmoid", num_steps: int = 1000) -> npt.NDArray[np.float64]:
    """``abar[t] = prod_{s <= t} (1 - beta_s)`` for a schedule, ``(num_steps,)`` float64."""
    out: npt.NDArray[np.float64] = np.cumprod(1.0 - _betas(schedule, num_steps), dtype=np.float64)
    out.setflags(write=False)
    return out


class DiffusionNoise(Distorter):
    """Forward-diffusion noise (see the module docstring for the maths).

    Args:
        step: the 0-based diffusion step ``t``; POVID uses 500, BPO 900, SeVa 500 or 800.
        num_steps: the schedule length ``T``.
        schedule: ``"sigmoid"`` (POVID's), ``"linear"`` (DDPM) or ``"cosine"`` (improved DDPM).
        space: ``"pixel"`` for images with values in ``[0, 1]``; ``"normalized"`` for
            preprocessed tensors (tensor inputs only; values are left unbounded).
        overflow: ``"clamp"`` (pixel default), ``"wrap"`` (the official unclamped 8-bit cast) or
            ``"none"`` (normalized default; keep values as they are).
        severity: 1..5 picks ``step`` 100, 300, 500, 700, 900 unless ``step`` is given.
    """

    name: ClassVar[str] = "diffusion"
    SEVERITIES: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"step": 100},
        2: {"step": 300},
        3: {"step": 500},
        4: {"step": 700},
        5: {"step": 900},
    }

    def __init__(
        self,
        step: int | None = None,
        *,
        num_steps: int = 1000,
        schedule: Schedule = "sigmoid",
        space: Space = "pixel",
        overflow: Overflow | None = None,
        severity: int | None = None,
    ) -> None:
        step = pick("step", step, severity, self.SEVERITIES, 500)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
            raise ValueError(f"step must be an int in [0, {num_steps - 1}], got {step!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if space not in ("pixel", "normalized"):
            raise ValueError(f"space must be 'pixel' or 'normalized', got {space!r}")
        if overflow is None:
            overflow = "clamp" if space == "pixel" else "none"
        if overflow not in _OVERFLOW_MODES:
            raise ValueError(f"overflow must be 'clamp', 'wrap' or 'none', got {overflow!r}")
        if space == "normalized" and overflow != "none":
            raise ValueError(
                "space='normalized' has no pixel range to clamp or wrap; use overflow='none'"
            )
        self.step = step
        self.num_steps = num_steps
        self.schedule: Schedule = schedule
        self.space: Space = space
        self.overflow: Overflow = overflow
        abar = float(alphas_cumprod(schedule, num_steps)[step])
        self.signal_scale = abar**0.5
        """``sqrt(abar_t)``, the factor on the clean image."""
        self.noise_scale = (1.0 - abar) ** 0.5
        """``sqrt(1 - abar_t)``, the factor on the Gaussian noise."""

    def params(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "num_steps": self.num_steps,
            "schedule": self.schedule,
            "space": self.space,
            "overflow": self.overflow,
        }

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return affine_noise(
            images,
            seeds,
            self.signal_scale,
            self.noise_scale,
            mode=_OVERFLOW_MODES[self.overflow],
        )

    def finish(self, images: torch.Tensor, levels: int | None) -> torch.Tensor:
        # the overflow policy is already applied, fused with the noise
        return images
