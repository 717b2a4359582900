"""`node.state` stays pure: no clock, randomness, I/O, asyncio or consensus imports."""

from __future__ import annotations

import ast
import pathlib

import node.state
from node.state import Machine

ALLOWED = {
    "__future__", "collections", "dataclasses", "enum", "functools", "hashlib", "hmac",
    "re", "struct", "types", "typing", "msgpack", "cryptography", "nacl",
}  # fmt: skip


def test_only_allowed_imports():
    root = pathlib.Path(node.state.__file__).parent
    seen = set()
    for path in sorted(root.glob("*.py")):
        for node_ in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node_, ast.Import):
                seen |= {(path.name, a.name.split(".")[0]) for a in node_.names}
            elif isinstance(node_, ast.ImportFrom) and node_.level == 0:
                seen.add((path.name, node_.module.split(".")[0]))
    bad = sorted((f, m) for f, m in seen if m not in ALLOWED)
    assert not bad, f"forbidden imports in node/state: {bad}"
    assert {m for _, m in seen} >= {"msgpack", "cryptography"}


def test_machine_fits_the_runner_protocol():
    from consensus.statemachine import StateMachine

    assert isinstance(Machine(), StateMachine)
