"""Chaining distorters: :class:`Compose` (each in turn, with a probability) and :class:`OneOf`.

Both are :class:`~povidgen.distort.base.Distorter`\\ s, so they work on every input kind and nest.
Every random decision is made per item from the item's seed, so item ``i`` of a batch equals the
single-image call with ``seeds[i]``:

* :class:`Compose` of ``D_0 .. D_{n-1}`` with probabilities ``p``: for ``k = 0 .. n-1`` in order,
  ``x <- finish_k(D_k(x, s_k))`` if ``u_k < p_k``, where ``s_k = derive_seed(seed, "compose", k)``
  and ``u_k ~ U[0, 1)`` from ``Philox(key=derive_seed(seed, "compose", k, "apply"))``;
* :class:`OneOf`: ``x <- finish_j(D_j(x, s))`` for one ``j`` drawn with ``P(j) = p_j / sum(p)``
  (inverse CDF of ``u ~ U[0, 1)`` from ``Philox(key=derive_seed(seed, "oneof", "choice"))``)
  and ``s = derive_seed(seed, "oneof")``.

``finish_k`` is the child's own :meth:`~povidgen.distort.base.Distorter.finish` (clamping by
default, DiffusionNoise's overflow policy for it), so each child's output is settled before the
next one sees it; the combinations themselves leave values as their children did. In a batch the
items are grouped by the children that apply to them, and each child runs once per step on its
sub-batch ``(B_k, C, H, W)``; the results are scattered back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from povidgen.distort.base import Distorter
from povidgen.errors import DistortionError
from povidgen.seeding import derive_seed

__all__ = ["Compose", "OneOf"]


def _children(distorters: Any, owner: str) -> list[Distorter]:
    if isinstance(distorters, Distorter) or not isinstance(distorters, Iterable):
        raise TypeError(
            f"{owner} takes a list of Distorter instances, got {type(distorters).__name__}"
        )
    children = list(distorters)
    if not children:
        raise ValueError(f"{owner} needs at least one distorter")
    for index, child in enumerate(children):
        if not isinstance(child, Distorter):
            hint = " (pass an instance, not the class)" if isinstance(child, type) else ""
            raise TypeError(
                f"{owner} distorters[{index}] must be a Distorter instance, "
                f"got {type(child).__name__}{hint}"
            )
    return children


def _probabilities(p: Any, count: int, owner: str, *, upper: float) -> list[float]:
    if isinstance(p, str | bytes) or not isinstance(p, Sequence):
        raise TypeError(f"{owner} p must be a list of numbers, got {type(p).__name__}")
    if len(p) != count:
        raise ValueError(f"{owner} p needs one probability per distorter ({count}), got {len(p)}")
    values = []
    for value in p:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{owner} p must hold numbers, got {type(value).__name__}")
        if not (math.isfinite(value) and 0.0 <= value <= upper):
            raise ValueError(f"{owner} p values must be in [0, {upper:g}], got {value!r}")
        values.append(float(value))
    return values


def _describe(children: list[Distorter]) -> list[dict[str, Any]]:
    return [{"name": child.name, "params": child.params()} for child in children]


def _apply(
    child: Distorter, images: torch.Tensor, rows: list[int], seeds: list[int]
) -> torch.Tensor:
    """Run ``child`` (then its ``finish``) on ``images[rows]`` in place of those rows."""
    if not rows:
        return images
    if len(rows) == images.shape[0]:
        sub = images
    else:
        index = torch.tensor(rows, dtype=torch.long, device=images.device)
        sub = images.index_select(0, index)
    out = child.finish(child.distort_batch(sub, seeds), None)
    if out.shape != sub.shape:
        raise DistortionError(
            f"{type(child).__name__}.distort_batch returned shape {tuple(out.shape)} for "
            f"input {tuple(sub.shape)}"
        )
    out = out.to(images.dtype)
    if sub is images:
        return out
    return images.index_copy(0, index, out)


class Compose(Distorter):
    """Apply ``distorters`` in order, distorter ``k`` with probability ``p[k]`` per item.

    Args:
        distorters: a non-empty list of :class:`Distorter` instances.
        p: one probability in ``[0, 1]`` per distorter; default all 1 (always apply).

    ``params()`` gives ``{"distorters": [{"name", "params"}, ...], "p": [...]}``. See the module
    docstring for the seeds and decisions.
    """

    name: ClassVar[str] = "compose"

    def __init__(
        self, distorters: Sequence[Distorter], *, p: Sequence[float] | None = None
    ) -> None:
        self.distorters = _children(distorters, "Compose")
        count = len(self.distorters)
        self.p = [1.0] * count if p is None else _probabilities(p, count, "Compose", upper=1.0)

    def params(self) -> dict[str, Any]:
        return {"distorters": _describe(self.distorters), "p": list(self.p)}

    def plan(self, seeds: list[int]) -> list[list[bool]]:
        """``plan[i][k]``: whether distorter ``k`` applies to the item with ``seeds[i]``."""
        plans = []
        for seed in seeds:
            row = []
            for k, chance in enumerate(self.p):
                if chance >= 1.0 or chance <= 0.0:
                    row.append(chance >= 1.0)
                    continue
                key = derive_seed(seed, "compose", k, "apply")
                row.append(float(np.random.Generator(np.random.Philox(key=key)).random()) < chance)
            plans.append(row)
        return plans

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        plans = self.plan(seeds)
        x = images.clone()  # never write into the caller's tensor
        for k, child in enumerate(self.distorters):
            rows = [i for i, plan in enumerate(plans) if plan[k]]
            sub_seeds = [derive_seed(seeds[i], "compose", k) for i in rows]
            x = _apply(child, x, rows, sub_seeds)
        return x

    def finish(self, images: torch.Tensor, levels: int | None) -> torch.Tensor:
        # every child's own finish has already settled its output
        return images


class OneOf(Distorter):
    """Apply exactly one of ``distorters`` per item, chosen with probabilities ``p``.

    Args:
        distorters: a non-empty list of :class:`Distorter` instances.
        p: one non-negative weight per distorter, normalised to sum to 1; default uniform.

    ``params()`` gives ``{"distorters": [{"name", "params"}, ...], "p": [...]}`` with ``p``
    normalised. See the module docstring for the seeds and the choice.
    """

    name: ClassVar[str] = "one_of"

    def __init__(
        self, distorters: Sequence[Distorter], *, p: Sequence[float] | None = None
    ) -> None:
        self.distorters = _children(distorters, "OneOf")
        count = len(self.distorters)
        weights = [1.0] * count if p is None else _probabilities(p, count, "OneOf", upper=math.inf)
        total = math.fsum(weights)
        if total <= 0.0:
            raise ValueError("OneOf p must have a positive sum")
        self.p = [weight / total for weight in weights]

    def params(self) -> dict[str, Any]:
        return {"distorters": _describe(self.distorters), "p": list(self.p)}

    def choices(self, seeds: list[int]) -> list[int]:
        """The index of the distorter applied to the item with each seed."""
        cumulative = np.cumsum(self.p)
        cumulative[-1] = 1.0
        allowed = [k for k, chance in enumerate(self.p) if chance > 0.0]
        picked = []
        for seed in seeds:
            key = derive_seed(seed, "oneof", "choice")
            u = np.random.Generator(np.random.Philox(key=key)).random()
            k = int(np.searchsorted(cumulative, u, side="right"))
            # float rounding can land on a zero-probability slot; take the next allowed one
            picked.append(next((j for j in allowed if j >= k), allowed[-1]))
        return picked

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        chosen = self.choices(seeds)
        x = images.clone()  # never write into the caller's tensor
        for k, child in enumerate(self.distorters):
            rows = [i for i, pick in enumerate(chosen) if pick == k]
            x = _apply(child, x, rows, [derive_seed(seeds[i], "oneof") for i in rows])
        return x

    def finish(self, images: torch.Tensor, levels: int | None) -> torch.Tensor:
        # the chosen child's own finish has already settled its output
        return images
