"""Distorting images online, inside a ``DataLoader``: POVID stage 2's way.

POVID (Zhou et al., 2024, arXiv:2402.11411) makes the image-side rejected inputs during training:
each batch's images are noised as they are loaded, with fresh noise every epoch, rather than
stored once. :class:`DistortingCollator` does that as a ``collate_fn``::

    loader = DataLoader(dataset, batch_size=8, shuffle=True,
                        collate_fn=DistortingCollator(DiffusionNoise(step=500), seed=0))
    for epoch in range(epochs):
        loader.collate_fn.set_epoch(epoch)
        for batch in loader:
            batch["images"]            # (B, C, H, W), clean
            batch["rejected_images"]   # (B, C, H, W), distorted

Example ``i`` of a batch is distorted with the seed ``derive_seed(seed, example_id, epoch)``:
the same example in the same epoch always gets the same distortion, whatever batch it lands in
and wherever it sits in it, and every epoch gets new, reproducible noise.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from povidgen.distort.base import Distorter
from povidgen.seeding import derive_seed

__all__ = ["DistortingCollator"]


def _check_key(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    return value


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def _example_id(example: Any, position: int) -> str | int:
    if not isinstance(example, Mapping) or "id" not in example:
        return position
    value = example["id"]
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"example ids must be str or int, got {type(value).__name__} ({value!r})")


class DistortingCollator:
    """A ``collate_fn`` that collates examples, then adds distorted copies of their images.

    Args:
        distorter: the :class:`Distorter` to apply (a :class:`~povidgen.distort.compose.Compose`
            or :class:`~povidgen.distort.compose.OneOf` for several).
        base_collate: turns the list of examples into a batch mapping; default
            ``torch.utils.data.default_collate`` (examples are then dicts).
        image_key: the batch entry holding the images, a float tensor ``(B, C, H, W)`` with
            values in ``[0, 1]`` (any device).
        output_key: where the distorted images ``(B, C, H, W)`` go (same dtype and device).
        seed: the global seed.

    The seed of an example is ``derive_seed(seed, example_id, epoch)``. ``example_id`` is the
    example's ``"id"`` (a str or an int) when it is a mapping with that key; otherwise its
    position in the epoch, counted from 0 by this collator since the last :meth:`set_epoch`
    (or its creation). Positions only identify examples when the order is fixed and one
    process collates (``shuffle=False``, ``num_workers=0``; each worker counts on its own):
    give the examples ids for noise that follows the example. :meth:`set_epoch` before each
    epoch, as with a ``DistributedSampler``; workers take it up when they are created at the
    start of an epoch, so do not combine it with ``persistent_workers=True``.
    """

    def __init__(
        self,
        distorter: Distorter,
        *,
        base_collate: Callable[[list[Any]], Any] | None = None,
        image_key: str = "images",
        output_key: str = "rejected_images",
        seed: int = 0,
    ) -> None:
        if not isinstance(distorter, Distorter):
            raise TypeError(
                f"distorter must be a Distorter instance, got {type(distorter).__name__}"
            )
        if base_collate is not None and not callable(base_collate):
            raise TypeError(f"base_collate must be callable, got {type(base_collate).__name__}")
        self.distorter = distorter
        self.base_collate: Callable[[list[Any]], Any] = (
            default_collate if base_collate is None else base_collate
        )
        self.image_key = _check_key("image_key", image_key)
        self.output_key = _check_key("output_key", output_key)
        if self.output_key == self.image_key:
            raise ValueError(
                f"output_key must differ from image_key ({image_key!r}): the clean images are kept"
            )
        self.seed = _check_count("seed", seed)
        self.epoch = 0
        self._position = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` in the seeds from now on, and restart the position count."""
        self.epoch = _check_count("epoch", epoch)
        self._position = 0

    def seeds(self, examples: Sequence[Any], start: int = 0) -> list[int]:
        """The distortion seed of each example, the first at position ``start`` in the epoch."""
        return [
            derive_seed(self.seed, _example_id(example, start + offset), self.epoch)
            for offset, example in enumerate(examples)
        ]

    def __call__(self, examples: list[Any]) -> Any:
        seeds = self.seeds(examples, self._position)
        self._position += len(examples)
        batch = self.base_collate(examples)
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"base_collate must return a mapping (e.g. a dict), got {type(batch).__name__}"
            )
        if self.image_key not in batch:
            raise KeyError(
                f"the batch has no {self.image_key!r} entry to distort; its keys are "
                f"{sorted(map(str, batch))} (set image_key=...)"
            )
        images = batch[self.image_key]
        if not isinstance(images, torch.Tensor):
            raise TypeError(
                f"batch[{self.image_key!r}] must be a float tensor (B, C, H, W), "
                f"got {type(images).__name__}"
            )
        if not images.is_floating_point() or images.dim() != 4:
            raise TypeError(
                f"batch[{self.image_key!r}] must be a float tensor (B, C, H, W), got "
                f"{images.dtype} of shape {tuple(images.shape)}"
            )
        if images.shape[0] != len(examples):
            raise ValueError(
                f"batch[{self.image_key!r}] holds {images.shape[0]} images for "
                f"{len(examples)} examples"
            )
        out = batch if isinstance(batch, MutableMapping) else dict(batch)
        out[self.output_key] = self.distorter.batch(images, seeds)
        return out

    def __repr__(self) -> str:
        return (
            f"DistortingCollator({self.distorter!r}, image_key={self.image_key!r}, "
            f"output_key={self.output_key!r}, seed={self.seed}, epoch={self.epoch})"
        )
