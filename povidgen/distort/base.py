"""The :class:`Distorter` extension point: corrupt an image so a VLM hallucinates on it."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
from PIL import Image

from povidgen.errors import DistortionError
from povidgen.seeding import derive_seed

if TYPE_CHECKING:
    import torch

# torch (and the modules built on it: philox, tensors) is imported when an image is first
# distorted, not with this module: the builder, the registry and `import povidgen` need the
# class, and a run without a distorter should not pay PyTorch's import time.

__all__ = ["Distorter", "pick"]

_T = TypeVar("_T")

SEVERITIES = (1, 2, 3, 4, 5)


def pick(
    name: str,
    value: _T | None,
    severity: int | None,
    table: Mapping[int, Mapping[str, Any]],
    default: _T,
) -> _T:
    """A distorter setting: the explicit ``value``, else the ``severity`` table's, else
    ``default``."""
    if value is not None:
        return value
    if severity is None:
        return default
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an int from 1 to 5, got {severity!r}")
    chosen: _T = table[severity].get(name, default)
    return chosen


class Distorter:
    """Corrupts images, reproducibly for a given seed, on every kind of image input.

    Call it as ``distorter(image, seed=...)`` on a PIL image (any common mode), a uint8 numpy
    array, or a float tensor ``(C, H, W)`` / ``(B, C, H, W)`` with values in ``[0, 1]`` on any
    device; the result has the input's kind, size and mode family (see
    :mod:`povidgen.distort.tensors`). For a 4-D tensor and one ``seed``, item ``i`` uses
    ``derive_seed(seed, i)``; :meth:`batch` takes one seed per item. The same seed gives the same
    result whatever the input kind, batch or device (within float tolerance).

    Subclasses implement one of two hooks and set :attr:`name`:

    * :meth:`distort_batch` (preferred): ``(B, C, H, W)`` float32 in ``[0, 1]`` plus one seed
      per item -> a tensor of the same shape; everything else is derived;
    * :meth:`distort`: PIL image -> PIL image, for operations that only exist on PIL images.
      The other paths then go through PIL one image at a time.

    Report settings through :meth:`params` and, optionally, a ``SEVERITIES`` table (1 = mild,
    5 = severe) that the constructor's ``severity=`` reads with :func:`pick`. Register a
    subclass for :func:`povidgen.get_distorter` through the entry-point group
    ``povidgen.distorters``.
    """

    name: ClassVar[str] = "custom"
    """The short name recorded in provenance (and, by convention, the entry-point name)."""

    SEVERITIES: ClassVar[Mapping[int, Mapping[str, Any]]] = {}
    """Constructor settings for ``severity=1..5``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Distorter:
        if cls.distort_batch is Distorter.distort_batch and cls.distort is Distorter.distort:
            raise TypeError(
                f"Can't instantiate {cls.__name__}: a Distorter implements distort_batch "
                "(tensors) or distort (PIL images)"
            )
        return super().__new__(cls)

    def params(self) -> dict[str, Any]:
        """The parameters that determine the output, recorded in provenance (JSON-serialisable)."""
        return {}

    # -- hooks ---------------------------------------------------------------------------------

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Distort a ``(B, C, H, W)`` float32 batch in ``[0, 1]``; item ``i`` uses ``seeds[i]``.

        Values may leave ``[0, 1]``; :meth:`finish` settles them. The default goes through
        :meth:`distort` one image at a time.
        """
        import torch

        results = []
        for image, seed in zip(images, seeds, strict=True):
            grey = image.shape[0] == 1
            if image.shape[0] not in (1, 3):
                raise DistortionError(
                    f"{type(self).__name__} works through PIL and takes 1 or 3 channels, "
                    f"got {image.shape[0]}"
                )
            pixels = image.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
            array = pixels[0].numpy() if grey else pixels.permute(1, 2, 0).contiguous().numpy()
            pil = Image.fromarray(array)
            out = torch.from_numpy(_as_array(self.distort(pil, seed=seed), grey))
            results.append(out.to(image.device, torch.float32).div_(255))
        return torch.stack(results)

    def distort(self, image: Image.Image, *, seed: int) -> Image.Image:
        """Distort one PIL image. The default goes through :meth:`distort_batch`."""
        return self._run(image, [seed])  # type: ignore[no-any-return]

    def finish(self, images: torch.Tensor, levels: int | None) -> torch.Tensor:
        """Map distorted values back into ``[0, 1]`` before they are stored; clamps by default.
        ``levels`` is 256 for 8-bit sources, 65536 for 16-bit ones, ``None`` for floats."""
        return images.clamp_(0.0, 1.0)

    # -- public entry points ---------------------------------------------------------------------

    def __call__(self, image: Any, *, seed: int) -> Any:
        """Distort ``image`` (PIL, uint8 array or float tensor) with ``seed``."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DistortionError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(image, Image.Image) and type(self).distort is not Distorter.distort:
            result = self.distort(image, seed=seed)
            if not isinstance(result, Image.Image) or result.size != image.size:
                raise DistortionError(
                    f"{type(self).__name__}.distort must return a PIL image of size {image.size}"
                )
            return result
        if _is_tensor(image) and image.dim() == 4:
            return self._run(image, [derive_seed(seed, i) for i in range(image.shape[0])])
        return self._run(image, [seed])

    def batch(self, images: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Distort a float batch ``(B, C, H, W)``; item ``i`` uses ``seeds[i]``. Equal, item by
        item, to calling the distorter on each image with its seed."""
        if not _is_tensor(images) or images.dim() != 4:
            raise DistortionError("batch() takes a float tensor of shape (B, C, H, W)")
        result: torch.Tensor = self._run(images, seeds)
        return result

    def _run(self, image: Any, seeds: Sequence[int] | torch.Tensor) -> Any:
        from povidgen.distort.philox import check_seeds
        from povidgen.distort.tensors import unpack

        unpacked = unpack(image)
        seed_list = check_seeds(seeds, unpacked.tensor.shape[0])
        result = self.distort_batch(unpacked.tensor, seed_list)
        if result.shape != unpacked.tensor.shape:
            raise DistortionError(
                f"{type(self).__name__}.distort_batch returned shape {tuple(result.shape)} for "
                f"input {tuple(unpacked.tensor.shape)}"
            )
        return unpacked.repack(self.finish(result, unpacked.levels))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch: if nothing has imported
    it yet, nothing can have made a tensor."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _as_array(image: Image.Image, grey: bool) -> Any:
    """A PIL result as a writable ``(C, H, W)`` uint8 array."""
    array = np.array(image.convert("L" if grey else "RGB"))
    return array[None] if grey else np.ascontiguousarray(np.moveaxis(array, -1, 0))
