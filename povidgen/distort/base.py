"""The :class:`Distorter` extension point: corrupt an image so a VLM hallucinates on it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from PIL import Image

from povidgen.errors import DistortionError

__all__ = ["Distorter"]


class Distorter(ABC):
    """Corrupts an image, reproducibly for a given seed.

    Call it as ``distorter(image, seed=...)``: it checks the input, calls :meth:`distort`, and
    checks that the result is a PIL image of the same size. Subclasses implement
    :meth:`distort`, set :attr:`name`, and report their settings through :meth:`params`.

    Register a subclass for :func:`povidgen.get_distorter` through the entry-point group
    ``povidgen.distorters`` in your package's metadata.
    """

    name: ClassVar[str] = "custom"
    """The short name recorded in provenance (and, by convention, the entry-point name)."""

    @abstractmethod
    def distort(self, image: Image.Image, *, seed: int) -> Image.Image:
        """Return a corrupted copy of ``image``; the same ``seed`` gives the same result."""

    def params(self) -> dict[str, Any]:
        """The parameters that determine the output, recorded in provenance."""
        return {}

    def __call__(self, image: Image.Image, *, seed: int) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise DistortionError(
                f"{type(self).__name__} takes a PIL image, got {type(image).__name__}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DistortionError(f"seed must be an int, got {type(seed).__name__}")
        result = self.distort(image, seed=seed)
        if not isinstance(result, Image.Image) or result.size != image.size:
            raise DistortionError(
                f"{type(self).__name__}.distort must return a PIL image of size {image.size}"
            )
        return result

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
