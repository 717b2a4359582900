"""DESIGN.md §3 as a test: dependencies point one way, pure cores import no I/O.

`shares` and `consensus` use nothing of the project; `shares` does no I/O at all
(its only OS contact is `os.urandom` in `shares.rng`); the Raft core and the
custody state machine import no asyncio, sockets, clocks or global randomness.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["shares", "consensus"])
def test_library_packages_do_not_import_the_node(package: str) -> None:
    for path in _modules(package):
        bad = _imports(path) & {"node", "chaos"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


IO_MODULES = {"asyncio", "socket", "ssl", "time", "subprocess", "threading", "selectors"}


def test_shares_is_pure() -> None:
    for path in _modules("shares"):
        imported = _imports(path)
        allowed_os = path.name == "rng.py"
        bad = (imported & IO_MODULES) | ({"os"} & imported if not allowed_os else set())
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_shares_has_no_module_level_random() -> None:
    for path in _modules("shares"):
        assert "random" not in _imports(path), f"{path.relative_to(ROOT)} imports random"


PURE_CONSENSUS = ["core.py", "log.py", "quorum.py", "progress.py", "messages.py"]


@pytest.mark.parametrize("name", [*PURE_CONSENSUS, "readonly.py"])
def test_raft_core_is_pure(name: str) -> None:
    path = ROOT / "consensus" / name
    if not path.exists():
        assert name not in PURE_CONSENSUS, f"consensus/{name} is missing"
        return
    bad = _imports(path) & (IO_MODULES | {"os", "aiohttp"})
    assert not bad, f"consensus/{name} imports {bad}"


def test_custody_state_machine_is_pure() -> None:
    paths = _modules("node/state")
    assert paths, "node/state is missing"
    for path in paths:
        bad = _imports(path) & (IO_MODULES | {"os", "random", "aiohttp", "consensus", "pkcs11"})
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
