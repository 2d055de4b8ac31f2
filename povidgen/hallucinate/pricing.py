"""Token prices, call costs and a budget cap for API-backed hallucinators.

* :class:`Usage` is what one call consumed; :class:`ModelPrice` is a model's price in USD per
  million tokens.
* Prices come, in this order, from the caller's ``prices=`` (model -> :class:`ModelPrice`,
  the CLI's ``--price-in``/``--price-out``), from `genai-prices <https://pypi.org/project/
  genai-prices/>`_ when it is installed (a maintained table bundled with the package: cache
  reads and writes, batch and long-context tier prices; povidgen only reads its bundled data and
  never starts its network updater), and last from :data:`PRICES`, a small bundled table of
  common OpenAI and Anthropic models for when genai-prices is not installed.
* :func:`price_for` finds a model's price by exact name or by the longest known prefix, so dated
  snapshots (``gpt-4o-2024-08-06``, ``claude-sonnet-4-5-20250929``) resolve to their family.
* :func:`cost_usd` prices a call (batch APIs cost half); :func:`has_price` says whether a price
  is known at all (a model on a local server usually has none: its cost is unknown).
* :class:`CostTracker` keeps a run's running total and, with :meth:`CostTracker.reserve`, lets
  callers stop submitting calls before ``max_cost_usd`` would be passed.
* :func:`estimate_tokens` is a cheap token estimate for reservations;
  :func:`openai_image_tokens` and :func:`anthropic_image_tokens` are what each provider bills
  for one image of a given size (its documented formula), never the length of its base64 text.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from povidgen.errors import BudgetExceededError

__all__ = [
    "ANTHROPIC_IMAGE_TOKENS",
    "CHARS_PER_TOKEN",
    "OPENAI_IMAGE_TOKENS",
    "PRICES",
    "BudgetExceededError",
    "CostTracker",
    "ModelPrice",
    "Usage",
    "anthropic_image_tokens",
    "cost_usd",
    "estimate_tokens",
    "has_price",
    "openai_image_tokens",
    "price_for",
]

logger = logging.getLogger("povidgen")

BATCH_DISCOUNT = 0.5
"""The factor batch APIs (OpenAI Batch, Anthropic Message Batches) apply to every token price."""

CHARS_PER_TOKEN = 4
"""The rough characters-per-token ratio of English text that :func:`estimate_tokens` uses."""

OPENAI_IMAGE_TOKENS = 765
"""Input tokens of one image on OpenAI's GPT-4o family at ``detail="high"``, for an image
scaled to fit 1024 x 1024: 85 base tokens + 170 per 512-px tile, 4 tiles (``detail="low"`` is a
flat 85). Pass it to :func:`estimate_tokens` as ``tokens_per_image`` when the size or the model
is not known; :func:`openai_image_tokens` is the exact count for a size and a model."""

ANTHROPIC_IMAGE_TOKENS = 1600
"""Input tokens of one image on Anthropic's Claude models at the largest size sent without
downscaling (about 1.15 megapixels: ``width * height / 750``). Pass it to
:func:`estimate_tokens` as ``tokens_per_image`` when the size is not known;
:func:`anthropic_image_tokens` is the count for a size."""

# OpenAI's "Calculating costs" (images and vision guide): tile-priced models see the image
# scaled to fit 2048 x 2048 and then to a shortest side of 768 px, and bill base tokens plus
# tokens per 512-px tile; ``detail="low"`` is the base tokens alone. GPT-4o mini bills many more
# tokens an image at its lower token price, so an image costs what it costs on GPT-4o.
_OPENAI_TILES: dict[str, tuple[int, int]] = {  # model family: (base tokens, tokens per tile)
    "gpt-4o": (85, 170),
    "gpt-4o-mini": (2833, 5667),
    "gpt-4.1": (85, 170),
    "gpt-4.5": (85, 170),
    "gpt-5": (70, 140),
    "o1": (75, 150),
    "o3": (75, 150),
}
_OPENAI_DEFAULT_TILES = _OPENAI_TILES["gpt-4o"]  # unknown (e.g. OpenAI-compatible) models
# Patch-priced models: one token per 32-px patch covering the image (scaled down to at most
# 1536 patches), times the model's multiplier.
_OPENAI_PATCHES: dict[str, float] = {  # model family: tokens per patch
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
    "gpt-5-mini": 1.62,
    "gpt-5-nano": 2.46,
    "o4-mini": 1.72,
}
_OPENAI_MAX_SIDE = 2048
_OPENAI_SHORT_SIDE = 768
_OPENAI_TILE = 512
_OPENAI_PATCH = 32
_OPENAI_MAX_PATCHES = 1536

# Anthropic's vision guide: an image whose long side is over 1568 px is scaled down to it, and
# one of more than about 1.15 megapixels (~1,600 tokens) is scaled down to that; the tokens are
# width * height / 750. The cap is the largest size the guide lists as sent unscaled (784 x
# 1568, 1:2), so the estimate never falls short of a documented size.
_ANTHROPIC_MAX_SIDE = 1568
_ANTHROPIC_PIXELS_PER_TOKEN = 750
_ANTHROPIC_MAX_PIXELS = 784 * 1568


class Usage(BaseModel):
    """The tokens one call (or several, added with ``+``) consumed.

    ``input_tokens`` counts *all* prompt tokens, cached ones included; ``cached_input_tokens``
    is the part of them served from the provider's prompt cache (OpenAI's
    ``prompt_tokens_details.cached_tokens``) and ``cache_write_input_tokens`` the part written
    to it (Anthropic's ``cache_creation_input_tokens``). For Anthropic, whose ``input_tokens``
    excludes both, pass their sum as ``input_tokens``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cached_input_tokens: int = Field(default=0, ge=0)
    cache_write_input_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _cached_within_input(self) -> Usage:
        if self.cached_input_tokens + self.cache_write_input_tokens > self.input_tokens:
            raise ValueError(
                f"cached_input_tokens ({self.cached_input_tokens}) plus "
                f"cache_write_input_tokens ({self.cache_write_input_tokens}) exceed input_tokens "
                f"({self.input_tokens}); input_tokens must include the cached tokens"
            )
        return self

    def __add__(self, other: Usage) -> Usage:
        """The usage of both calls together."""
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_write_input_tokens=self.cache_write_input_tokens + other.cache_write_input_tokens,
        )


class ModelPrice(BaseModel):
    """A model's price in USD per million tokens.

    ``cached_input_per_mtok`` is the price of prompt-cache reads; ``None`` bills cached tokens
    at the full input price.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)


def _price(input_: float, output: float, cached: float | None = None) -> ModelPrice:
    return ModelPrice(input_per_mtok=input_, output_per_mtok=output, cached_input_per_mtok=cached)


# Public list prices in USD per million tokens (standard tier, no batch discount) as published
# by OpenAI and Anthropic and known in 2025 (checked against their pricing pages as of October
# 2025). Prices change: override or extend them with the ``prices`` argument of price_for /
# cost_usd (and of the hallucinators), e.g. prices={"gpt-4o": ModelPrice(...)}.
# Anthropic's cached price is the cache-read price; cache writes (1.25x input) are not modelled.
PRICES: dict[str, ModelPrice] = {
    # OpenAI
    "gpt-4o": _price(2.50, 10.00, 1.25),
    "gpt-4o-mini": _price(0.15, 0.60, 0.075),
    "gpt-4.1": _price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _price(0.10, 0.40, 0.025),
    "o4-mini": _price(1.10, 4.40, 0.275),
    "gpt-5": _price(1.25, 10.00, 0.125),
    "gpt-5-mini": _price(0.25, 2.00, 0.025),
    "gpt-5-nano": _price(0.05, 0.40, 0.005),
    # Anthropic
    "claude-opus-4-1": _price(15.00, 75.00, 1.50),
    "claude-sonnet-4-5": _price(3.00, 15.00, 0.30),
    "claude-sonnet-4": _price(3.00, 15.00, 0.30),
    "claude-haiku-4-5": _price(1.00, 5.00, 0.10),
    "claude-3-5-haiku": _price(0.80, 4.00, 0.08),
}

_SNAPSHOT_SEPARATORS = "-@:_"

_Value = TypeVar("_Value")


def _family(model: str, table: Mapping[str, _Value]) -> _Value | None:
    """``table[model]`` by exact name, else by the longest known prefix followed by a snapshot
    separator; a ``provider/`` prefix is tried without it too."""
    candidates = [model]
    if "/" in model:
        candidates.append(model.rsplit("/", 1)[1])
    for name in candidates:
        if name in table:
            return table[name]
        matches = [
            known
            for known in table
            if len(name) > len(known)
            and name.startswith(known)
            and name[len(known)] in _SNAPSHOT_SEPARATORS
        ]
        if matches:
            return table[max(matches, key=len)]
    return None


def price_for(
    model: str,
    prices: Mapping[str, ModelPrice] | None = None,
    *,
    provider: str | None = None,
) -> ModelPrice | None:
    """The list price of ``model`` (its base rates), or ``None`` when it is not known.

    ``prices`` comes first, then genai-prices (its base rates: long-context tiers, cache writes
    and batch prices are applied by :func:`cost_usd`), then :data:`PRICES`. ``provider``
    (``"openai"``, ``"anthropic"``) narrows the genai-prices lookup to that provider's models;
    ``None`` lets it guess from the name. A model matches a known name exactly, or else the
    longest known name that is a prefix of it followed by a separator (``-``, ``@``, ``:`` or
    ``_``), so ``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini`` and ``claude-sonnet-4-5-20250929``
    is ``claude-sonnet-4-5``, while ``gpt-4.1`` is not ``gpt-4``. A ``provider/`` prefix
    (``openai/gpt-4o``) is tried without it too.
    """
    if prices and (override := _family(model, prices)) is not None:
        return override
    found = _genai_model(model, provider)
    if found is not None:
        return _base_price(found)
    return _family(model, PRICES)


def has_price(
    model: str, prices: Mapping[str, ModelPrice] | None = None, *, provider: str | None = None
) -> bool:
    """Whether any price is known for ``model`` (see :func:`price_for`)."""
    return price_for(model, prices, provider=provider) is not None


def cost_usd(
    model: str,
    usage: Usage,
    *,
    batch: bool = False,
    prices: Mapping[str, ModelPrice] | None = None,
    provider: str | None = None,
) -> float:
    """The cost in USD of ``usage`` (one request) on ``model``; ``batch`` for a batch API.

    A price from ``prices`` is applied as it is (batch: half of it). Otherwise genai-prices
    prices the request with everything it knows (cache reads and writes, the long-context tier
    the request's input falls in, the batch price), and the bundled :data:`PRICES` table is the
    last resort (batch: half). Raises ``ValueError`` naming the model when no price is known.
    """
    if prices and (override := _family(model, prices)) is not None:
        return _flat_cost(override, usage, batch=batch)
    found = _genai_model(model, provider)
    if found is not None:
        return _genai_cost(found, usage, batch=batch)
    price = _family(model, PRICES)
    if price is None:
        raise ValueError(
            f"no price is known for model {model!r}; pass one with "
            f"prices={{{model!r}: ModelPrice(input_per_mtok=..., output_per_mtok=...)}} "
            "(USD per million tokens; on the command line --price-in and --price-out)"
        )
    return _flat_cost(price, usage, batch=batch)


def _flat_cost(price: ModelPrice, usage: Usage, *, batch: bool) -> float:
    cached_rate = (
        price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    )
    uncached = usage.input_tokens - usage.cached_input_tokens
    total = (
        uncached * price.input_per_mtok
        + usage.cached_input_tokens * cached_rate
        + usage.output_tokens * price.output_per_mtok
    ) / 1_000_000
    return total * BATCH_DISCOUNT if batch else total


@cache
def _genai_prices() -> Any | None:
    """The genai-prices module, or ``None`` when it is not installed.

    Only its bundled snapshot is read: :func:`genai_prices.calc_price` looks prices up in data
    shipped with the package, and the network updater (``UpdatePrices``) is never started.
    """
    try:
        import genai_prices
    except ImportError:
        logger.debug("genai-prices is not installed; using the bundled price table")
        return None
    return genai_prices


def _genai_model(model: str, provider: str | None) -> tuple[Any, Any] | None:
    """genai-prices' ``(provider, model)`` for ``model``, or ``None`` when it knows neither."""
    genai = _genai_prices()
    if genai is None:
        return None
    from genai_prices.data_snapshot import get_snapshot

    snapshot = get_snapshot()
    candidates = [model]
    if "/" in model:
        candidates.append(model.rsplit("/", 1)[1])
    for name in candidates:
        try:
            found: tuple[Any, Any] = snapshot.find_provider_model(name, None, provider, None)
        except LookupError:
            continue
        return found
    return None


def _genai_cost(found: tuple[Any, Any], usage: Usage, *, batch: bool) -> float:
    genai = _genai_prices()
    assert genai is not None
    provider, model = found
    request = genai.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_input_tokens,
    )
    context = {"processing": "batch"} if batch else None
    total = float(model.calc_price(request, provider, price_context=context).total_price)
    if batch and not _has_batch_variant(model):
        total *= BATCH_DISCOUNT  # both providers' batch APIs are half price
    return total


def _has_batch_variant(model: Any) -> bool:
    return any(
        variant.when.get("processing") == "batch" for variant in (model.price_variants or ())
    )


def _base_price(found: tuple[Any, Any]) -> ModelPrice:
    """A genai-prices model's current base rates as a :class:`ModelPrice`."""
    from datetime import UTC, datetime

    rates: dict[str, Any] = vars(found[1].get_prices(datetime.now(tz=UTC)))

    def rate(key: str) -> float | None:
        value = rates.get(key)
        if value is None:
            return None
        return float(getattr(value, "base", value))  # a tiered price: its first tier

    return ModelPrice(
        input_per_mtok=rate("input_mtok") or 0.0,
        output_per_mtok=rate("output_mtok") or 0.0,
        cached_input_per_mtok=rate("cache_read_mtok"),
    )


def estimate_tokens(text: str, *, images: int = 0, tokens_per_image: int = 0) -> int:
    """A cheap upper-leaning token estimate: ``ceil(len(text) / 4)`` plus the images.

    Image tokens depend on the provider and the image size, so the caller passes a fixed
    ``tokens_per_image`` (see :data:`OPENAI_IMAGE_TOKENS` and :data:`ANTHROPIC_IMAGE_TOKENS`,
    or :func:`openai_image_tokens` / :func:`anthropic_image_tokens` for a known size). Never
    pass an image's base64 text as ``text``: it is many times the tokens the image is billed.
    """
    if images < 0 or tokens_per_image < 0:
        raise ValueError("images and tokens_per_image must not be negative")
    return math.ceil(len(text) / CHARS_PER_TOKEN) + images * tokens_per_image


def openai_image_tokens(
    width: int,
    height: int,
    *,
    model: str = "gpt-4o",
    detail: Literal["high", "low", "auto"] = "high",
) -> int:
    """The input tokens OpenAI bills for one ``width`` x ``height`` image sent to ``model``.

    Tile-priced models (GPT-4o, GPT-4o mini, GPT-4.1, GPT-5, o1, o3 and unknown models): at
    ``detail="high"`` (and ``"auto"``, counted as high so the estimate does not fall short) the
    image is scaled to fit 2048 x 2048, then down to a shortest side of 768 px, and costs the
    model's base tokens plus its tokens per 512-px tile (GPT-4o: 85 + 170 a tile, so 765 for
    1024 x 1024; GPT-4o mini: 2833 + 5667 a tile); ``detail="low"`` is the base tokens.
    Patch-priced models (GPT-4.1 mini and nano, GPT-5 mini and nano, o4-mini): 32-px patches
    covering the image, scaled down to at most 1536 patches, times the model's multiplier.
    Dated snapshots resolve to their family as in :func:`price_for`.
    """
    if width < 1 or height < 1:
        raise ValueError(f"an image has a positive size, got {width} x {height}")
    multiplier = _family(model, _OPENAI_PATCHES)
    if multiplier is not None:
        return math.ceil(_openai_patches(width, height) * multiplier)
    base, per_tile = _family(model, _OPENAI_TILES) or _OPENAI_DEFAULT_TILES
    if detail == "low":
        return base
    w, h = float(width), float(height)
    if max(w, h) > _OPENAI_MAX_SIDE:
        scale = _OPENAI_MAX_SIDE / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > _OPENAI_SHORT_SIDE:
        scale = _OPENAI_SHORT_SIDE / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / _OPENAI_TILE) * math.ceil(h / _OPENAI_TILE)
    return base + per_tile * tiles


def _openai_patches(width: int, height: int) -> int:
    """The 32-px patches covering an image after OpenAI scales it to at most 1536 of them."""
    patch = _OPENAI_PATCH
    patches = math.ceil(width / patch) * math.ceil(height / patch)
    if patches <= _OPENAI_MAX_PATCHES:
        return patches
    shrink = math.sqrt(_OPENAI_MAX_PATCHES * patch * patch / (width * height))
    w, h = width * shrink / patch, height * shrink / patch  # in patches, fractional
    # scale a little further so that a whole number of patches fits the shorter way
    shrink *= min(max(1, math.floor(w)) / w, max(1, math.floor(h)) / h)
    w_px, h_px = max(1, int(width * shrink)), max(1, int(height * shrink))
    return min(_OPENAI_MAX_PATCHES, math.ceil(w_px / patch) * math.ceil(h_px / patch))


def anthropic_image_tokens(width: int, height: int) -> int:
    """The input tokens Anthropic bills for one ``width`` x ``height`` image.

    ``width * height / 750`` (rounded up) after the image is scaled down to a long side of at
    most 1568 px, and at most the tokens of the largest image the guide lists as sent unscaled
    (about 1.15 megapixels, ~1,600 tokens): 54 for 200 x 200, 1,334 for 1000 x 1000, 1,590 for
    1092 x 1092.
    """
    if width < 1 or height < 1:
        raise ValueError(f"an image has a positive size, got {width} x {height}")
    w, h = float(width), float(height)
    if max(w, h) > _ANTHROPIC_MAX_SIDE:
        scale = _ANTHROPIC_MAX_SIDE / max(w, h)
        w, h = w * scale, h * scale
    pixels = min(w * h, _ANTHROPIC_MAX_PIXELS)
    return math.ceil(pixels / _ANTHROPIC_PIXELS_PER_TOKEN)


class CostTracker:
    """A run's running cost, with reservations so that callers stop before a cap is passed.

    Before a call, :meth:`reserve` its estimated cost: it returns ``False`` (and reserves
    nothing) when the spent total plus the outstanding reservations plus the estimate would
    pass ``max_cost_usd``. After the call, :meth:`release` the reservation and :meth:`add` the
    real cost (or do both with ``release(estimate, actual)``). A reservation counts against the
    cap until it is released. With ``max_cost_usd=None`` every reservation succeeds and the
    tracker only sums.

    All methods are synchronous and lock-protected, so they are safe from concurrent asyncio
    tasks (they never await) and from threads.
    """

    def __init__(self, max_cost_usd: float | None = None) -> None:
        if max_cost_usd is not None and not max_cost_usd >= 0:
            raise ValueError(f"max_cost_usd must be zero or positive, got {max_cost_usd!r}")
        self.max_cost_usd = max_cost_usd
        self.priced = True
        """``False`` when the calls' price is unknown: then :attr:`spent` stays 0 and the
        run's cost is reported as unknown."""
        self._spent = 0.0
        self._reserved = 0.0
        self._reservations = 0
        self._lock = threading.Lock()

    @property
    def spent(self) -> float:
        """The real cost recorded so far, in USD."""
        return self._spent

    @property
    def reserved(self) -> float:
        """The estimated cost of calls reserved but not yet released, in USD."""
        return self._reserved

    @property
    def remaining(self) -> float | None:
        """What is left under the cap after spending and reservations (``None`` when uncapped)."""
        if self.max_cost_usd is None:
            return None
        return max(0.0, self.max_cost_usd - self._spent - self._reserved)

    @property
    def exhausted(self) -> bool:
        """Whether the real cost has reached the cap (never, when uncapped)."""
        return self.max_cost_usd is not None and self._spent >= self.max_cost_usd

    def add(self, cost: float) -> None:
        """Record a real cost (it may take the total past the cap: estimates can be low)."""
        _check_amount("cost", cost)
        with self._lock:
            self._spent += cost

    def reserve(self, estimate: float) -> bool:
        """Reserve ``estimate`` USD for a call; ``False`` (nothing reserved) if it would pass
        the cap."""
        _check_amount("estimate", estimate)
        with self._lock:
            if (
                self.max_cost_usd is not None
                and self._spent + self._reserved + estimate > self.max_cost_usd
            ):
                return False
            self._reserved += estimate
            self._reservations += 1
            return True

    def release(self, estimate: float, actual: float | None = None) -> None:
        """Release a reservation made with :meth:`reserve`, recording ``actual`` when given."""
        _check_amount("estimate", estimate)
        if actual is not None:
            _check_amount("actual", actual)
        with self._lock:
            if self._reservations == 0:
                raise ValueError("release() without a matching reserve()")
            self._reservations -= 1
            # Exactly zero once nothing is outstanding, so float drift cannot accumulate.
            self._reserved = max(0.0, self._reserved - estimate) if self._reservations else 0.0
            if actual is not None:
                self._spent += actual

    def __repr__(self) -> str:
        return (
            f"CostTracker(max_cost_usd={self.max_cost_usd!r}, spent={self._spent:.6f}, "
            f"reserved={self._reserved:.6f})"
        )


def _check_amount(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite, non-negative number of USD, got {value!r}")
