"""POVID's image distortion: the closed-form forward diffusion process on raw pixels.

For a clean image ``x_0`` with values in ``[0, 1]`` and step ``t`` (0-based) of a ``T``-step
schedule with betas ``beta_s``::

    abar_t = prod_{s <= t} (1 - beta_s)
    x_t    = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps,      eps ~ N(0, I)

POVID uses ``T = 1000`` sigmoid betas,
``beta = sigmoid(linspace(-6, 6, T)) * (5e-3 - 1e-5) + 1e-5``, and ``t = 500``, so
``sqrt(abar) = 0.8630`` and ``sqrt(1 - abar) = 0.5052``. The noise is added to the raw image
at native resolution, before any square padding or CLIP resize/normalise.

``x_t`` leaves ``[0, 1]`` (about a third of the values at ``t = 500``). The official code turns it
back into 8-bit pixels with ``(x * 255).byte()``, which truncates towards zero and wraps modulo
256: ``overflow="wrap"`` reproduces that bit for bit. ``overflow="clamp"`` (the default) clips to
``[0, 1]`` and rounds, which is what a clean pipeline does.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from povidgen.distort.base import Distorter
from povidgen.errors import DistortionError

__all__ = ["DiffusionNoise", "sigmoid_schedule"]

Overflow = Literal["wrap", "clamp"]

_EIGHT_BIT_MODES = {"L": 0, "LA": 1, "RGB": 0, "RGBA": 1, "CMYK": 0}  # value: alpha bands
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I"}


@functools.cache
def sigmoid_schedule(num_steps: int = 1000) -> tuple[npt.NDArray[np.float64], ...]:
    """POVID's sigmoid beta schedule and its cumulative products, in float64.

    Returns ``(betas, alphas_cumprod)``, each of shape ``(num_steps,)``, with
    ``betas = sigmoid(linspace(-6, 6, num_steps)) * (5e-3 - 1e-5) + 1e-5`` and
    ``alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    ramp = np.linspace(-6.0, 6.0, num_steps)
    betas = 1.0 / (1.0 + np.exp(-ramp)) * (5e-3 - 1e-5) + 1e-5
    alphas_cumprod: npt.NDArray[np.float64] = np.cumprod(1.0 - betas, dtype=np.float64)
    betas.setflags(write=False)
    alphas_cumprod.setflags(write=False)
    return betas, alphas_cumprod


class DiffusionNoise(Distorter):
    """POVID's forward-diffusion noise on raw pixels (see the module docstring for the maths).

    Args:
        step: the 0-based diffusion step ``t``; POVID uses 500, BPO 900, SeVa 500 or 800.
        num_steps: the schedule length ``T``.
        schedule: the beta schedule; ``"sigmoid"`` is POVID's and, for now, the only one.
        overflow: ``"clamp"`` clips ``x_t`` to ``[0, 1]`` and rounds; ``"wrap"`` reproduces the
            official code's unclamped ``(x * 255).byte()`` (truncate, then wrap modulo 256).

    Call it as ``noise(image, seed=...)``. The result has the input's size and mode family:
    L, RGB and CMYK stay 8-bit in the same mode; LA and RGBA keep their alpha band untouched;
    16-bit greyscale (``I;16``, ``I``) stays 16-bit; ``1`` becomes ``L``; ``P`` becomes ``RGB``
    (``RGBA`` if it has transparency). ``F`` images are taken to hold values in ``[0, 1]``.
    The noise is a function of ``seed`` alone, drawn with torch's CPU generator.
    """

    name: ClassVar[str] = "diffusion"

    def __init__(
        self,
        step: int = 500,
        *,
        num_steps: int = 1000,
        schedule: Literal["sigmoid"] = "sigmoid",
        overflow: Overflow = "clamp",
    ):
        if schedule != "sigmoid":
            raise ValueError(f"schedule must be 'sigmoid' (POVID's), got {schedule!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
            raise ValueError(f"step must be an int in [0, {num_steps - 1}], got {step!r}")
        if overflow not in ("wrap", "clamp"):
            raise ValueError(f"overflow must be 'wrap' or 'clamp', got {overflow!r}")
        self.step = step
        self.num_steps = num_steps
        self.overflow: Overflow = overflow
        _, alphas_cumprod = sigmoid_schedule(num_steps)
        abar = float(alphas_cumprod[step])
        self.signal_scale = abar**0.5
        """``sqrt(abar_t)``, the factor on the clean image."""
        self.noise_scale = (1.0 - abar) ** 0.5
        """``sqrt(1 - abar_t)``, the factor on the Gaussian noise."""

    def params(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "num_steps": self.num_steps,
            "schedule": "sigmoid",
            "overflow": self.overflow,
        }

    def noise_float(
        self, x0: npt.NDArray[np.floating[Any]], *, seed: int
    ) -> npt.NDArray[np.float32]:
        """``x_t`` for a float array ``x0`` of any shape with values in ``[0, 1]``, unclipped."""
        generator = torch.Generator().manual_seed(seed)
        array = np.ascontiguousarray(x0, dtype=np.float32)
        if not array.flags.writeable:  # torch.from_numpy warns on read-only buffers
            array = array.copy()
        x = torch.from_numpy(array)
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        # eps is ours, so scale it in place instead of allocating two more temporaries
        eps.mul_(self.noise_scale).add_(x, alpha=self.signal_scale)
        return eps.numpy()

    def distort(self, image: Image.Image, *, seed: int) -> Image.Image:
        mode = image.mode
        if mode == "1":
            image, mode = image.convert("L"), "L"
        elif mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in image.info
            mode = "RGBA" if has_alpha else "RGB"
            image = image.convert(mode)

        if mode in _EIGHT_BIT_MODES:
            return self._distort_integer(image, seed=seed, levels=256)
        if mode in _SIXTEEN_BIT_MODES:
            return self._distort_integer(image, seed=seed, levels=65536)
        if mode == "F":
            x = self.noise_float(np.asarray(image, dtype=np.float32), seed=seed)
            if self.overflow == "clamp":
                np.clip(x, 0.0, 1.0, out=x)
            return Image.fromarray(x, mode="F")
        raise DistortionError(
            f"DiffusionNoise cannot distort images of mode {image.mode!r}; supported modes: "
            "1, L, LA, P, PA, RGB, RGBA, CMYK, I;16, I, F (convert others with image.convert)"
        )

    def _distort_integer(self, image: Image.Image, *, seed: int, levels: int) -> Image.Image:
        alpha_bands = _EIGHT_BIT_MODES.get(image.mode, 0)
        pixels = np.asarray(image)
        if image.mode == "I" and (pixels.min() < 0 or pixels.max() >= levels):
            raise DistortionError(
                "DiffusionNoise treats mode 'I' images as 16-bit, but this one has values in "
                f"[{pixels.min()}, {pixels.max()}]"
            )
        colour = pixels[..., : pixels.shape[-1] - alpha_bands] if alpha_bands else pixels
        top = levels - 1
        x = self.noise_float(colour.astype(np.float32) / np.float32(top), seed=seed)
        x *= top
        if self.overflow == "wrap":
            # (x * 255).byte() in torch: truncate towards zero, keep the low bits
            quantised = np.trunc(x).astype(np.int64) % levels
        else:
            quantised = np.clip(np.rint(x), 0, top).astype(np.int64)
        out = quantised.astype(pixels.dtype if levels > 256 else np.uint8)
        if alpha_bands:
            out = np.concatenate([out, pixels[..., -alpha_bands:]], axis=-1)
        if image.mode == "I":
            return Image.fromarray(out.astype(np.int32), mode="I")
        if image.mode.startswith("I;16"):
            result = Image.new(image.mode, image.size)
            result.frombytes(out.astype(pixels.dtype).tobytes())
            return result
        return Image.fromarray(out, mode=image.mode)
