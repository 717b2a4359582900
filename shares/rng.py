"""Randomness sources for `shares`: the system CSPRNG, and a seeded one for tests.

Every random operation in `shares` takes an `rng` argument (a callable
`n -> n bytes`); nothing reads global randomness, so every run can be replayed.
"""

from __future__ import annotations

import hashlib
import os

from .group import RandomSource


def system_rng() -> RandomSource:
    """The operating system CSPRNG; what production code passes."""
    return os.urandom


class SeededRNG:
    """Deterministic byte stream (SHA-512 in counter mode) for tests and simulators.

    Not for production secrets: anyone who knows the seed knows every output.
    """

    def __init__(self, seed: bytes | int | str) -> None:
        if isinstance(seed, int):
            seed = seed.to_bytes(16, "little", signed=True)
        elif isinstance(seed, str):
            seed = seed.encode()
        self._key = hashlib.sha512(b"custody/shares/seeded-rng/v1" + seed).digest()
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha512(self._key + self._counter.to_bytes(8, "little")).digest()
            self._counter += 1
            self._buffer += block
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out
