"""Randomness for `shares`: the RNG type, the one checked read, the nonce hedge, a test RNG.

Every random operation in `shares` takes an `rng` argument (a callable
`n -> n bytes`); nothing reads global randomness for a random *choice*, so
every run with a seeded RNG can be replayed. Every module reads its RNG
through `read_random`, which refuses a short or long read: a short read
silently leaves high-order bytes zero (a GF(2^8) coefficient that is mostly
zero puts the secret in clear in every share).

The one exception to "no global state" is `_ProcessHedge` below, on purpose:
FROST nonces must never repeat, and a per-process unique value plus a
counter, mixed with the RNG output, keep them apart when the RNG itself
repeats (see `hedged_random`). This module is also the only one in `shares`
that touches the OS (`os.urandom`, `os.getpid`, `os.register_at_fork`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable

from .errors import InvalidParameters, RandomnessError

#: An RNG is a callable returning `n` random bytes: `os.urandom` in production,
#: a seeded deterministic source in tests. Every random operation takes one.
RandomSource = Callable[[int], bytes]

#: Bound on a single read (the largest is a 64 KiB + 32 GF(2^8) coefficient).
MAX_READ = 1 << 17

_PROCESS_CONTEXT = b"custody/shares/rng/process/v1"


def read_random(rng: RandomSource, n: int) -> bytes:
    """Exactly `n` bytes from `rng`, or RandomnessError; what every module calls."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_READ:
        raise InvalidParameters(f"random read size must be 1..{MAX_READ}")
    if not callable(rng):
        raise InvalidParameters("rng must be a callable n -> n bytes")
    out = rng(n)
    if not isinstance(out, bytes | bytearray | memoryview):
        raise RandomnessError(f"the random source returned {type(out).__name__}, not bytes")
    out = bytes(out)
    if len(out) != n:
        raise RandomnessError(f"the random source returned {len(out)} bytes, {n} were requested")
    return out


class _ProcessHedge:
    """A value unique to this process and a counter, both public in effect but never repeating.

    The unique value is drawn from the OS when the process starts and again in
    every child after `fork()` (a cloned process must not share it); the
    counter makes every call within a process distinct. Neither is secret:
    they only have to differ where the caller's RNG output might not.
    """

    __slots__ = ("_counter", "_unique")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._unique = hashlib.sha512(
            _PROCESS_CONTEXT + os.urandom(32) + os.getpid().to_bytes(8, "big")
        ).digest()[:32]
        self._counter = itertools.count()

    def next(self) -> bytes:
        """unique value (32) || counter (8); `next` on itertools.count is atomic under the GIL."""
        return self._unique + next(self._counter).to_bytes(8, "big")


_PROCESS = _ProcessHedge()
os.register_at_fork(after_in_child=_PROCESS.reset)


def hedged_random(rng: RandomSource, n: int, domain: bytes) -> bytes:
    """`n` (<= 64) bytes = SHA-512(len || domain || process value || counter || rng(n)).

    As deterministic-hedged signing schemes do, fresh RNG output is mixed with
    values that differ even when the RNG repeats: the counter (an RNG stuck on
    one output, or replaying a stream, within one process) and the per-process
    value (a forked or otherwise cloned process). A whole-VM snapshot restored
    twice restores this state too; only the kernel's reseed on VM-generation
    change (Linux vmgenid) keeps `os.urandom` apart then. `domain` separates uses.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 64:
        raise InvalidParameters("hedged reads are 1..64 bytes")
    if not isinstance(domain, bytes) or not 1 <= len(domain) <= 255:
        raise InvalidParameters("hedge domain must be 1..255 bytes")
    fresh = read_random(rng, n)
    h = hashlib.sha512(bytes([len(domain)]) + domain)
    h.update(_PROCESS.next())
    h.update(fresh)
    return h.digest()[:n]


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
