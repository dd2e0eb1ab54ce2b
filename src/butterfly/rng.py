"""Step-indexed randomness (DESIGN contract 1).

Every random choice is drawn from a generator seeded by a pure function of named parts, e.g.
``generator("batch", seed, epoch)``. Nothing carries RNG state from one step to the next, so a
run resumed at step t sees exactly the randomness its parent would have seen.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across processes and runs)."""
    text = "\x1f".join(repr(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed` of ``parts``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g
