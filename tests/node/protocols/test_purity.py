"""node.protocols is sans-I/O: no sockets, event loop, clock, files, OS or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "node" / "protocols"
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "subprocess", "selectors", "os", "random"}
FORBIDDEN |= {"aiohttp", "pkcs11", "consensus", "io", "pathlib", "logging", "secrets"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_module_is_pure(path: Path) -> None:
    imported = _imports(path)
    bad = imported & FORBIDDEN
    assert not bad, f"{path.name} imports {bad}"
    # Only the nonce stock needs a lock (the node calls it from several threads).
    if path.name != "signing.py":
        assert "threading" not in imported
    assert "node" not in imported, "protocol engines use shares only, not the node packages"
