"""Crash points that only tests enable: proof that a protocol survives a crash at each step.

A node started with `CUSTODY_FAULT_POINTS=repair.target.stored,...` in its environment
exits at once (status `FAULT_EXIT`, no clean-up, as if it lost power) the first time
it reaches one of the named points. The variable is read once at import; nothing sets
it outside the tests, and a point that is not listed costs one set lookup.
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "CUSTODY_FAULT_POINTS"
FAULT_EXIT = 86
_POINTS = frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())

log = logging.getLogger("custody.faults")


def crash_point(name: str) -> None:
    """Exit now if the tests enabled this point."""
    if name in _POINTS:
        log.error("fault point %s reached: exiting now (test fault injection)", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(FAULT_EXIT)
