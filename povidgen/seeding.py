"""Per-example seeds, so that any single pair can be made again on its own."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]

_SEED_BITS = 63  # stays a valid seed for numpy, torch and random, signed or not


def derive_seed(seed: int, *keys: str | int) -> int:
    """Derive a stable 63-bit seed from a global seed and keys (usually the example id).

    ``derive_seed(seed, id)`` is a BLAKE2b hash of the seed and keys, so it does not depend on
    row order, process, platform or ``PYTHONHASHSEED``, and neighbouring ids give unrelated seeds.
    """
    material = "\x1f".join([str(int(seed)), *(str(k) for k in keys)]).encode("utf-8")
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _SEED_BITS)
