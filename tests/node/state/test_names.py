"""The state's naming rule is exactly the PKI's (docs/pki.md), so a name in the state and
the name in a certificate's identity URI always map one to one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node.pki.names import PkiError, check_principal_name, node_index
from node.state.names import is_member_name, is_principal_name, member_index


def pki_principal(name: str) -> bool:
    try:
        check_principal_name(name)
    except PkiError:
        return False
    return True


def pki_member(name: str) -> int:
    try:
        return node_index(name)
    except PkiError:
        return 0


SAMPLES = [
    "alice", "a", "a" * 32, "a" * 33, "Alice", "node-1", "node-15", "node-16", "node-0",
    "node-01", "node-", "nodes", "node_1", "x-y_z9", "9lives", "", "al ice", "é", "a:b",
    "node-1\n", "ａ",
]  # fmt: skip


def test_samples_agree():
    for name in SAMPLES:
        assert is_principal_name(name) == pki_principal(name), name
        assert member_index(name) == pki_member(name), name
        assert is_member_name(name) == bool(pki_member(name)), name


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"[a-z][a-z0-9_-]{0,34}|node-[0-9]{1,3}")))
def test_rules_agree(name):
    assert is_principal_name(name) == pki_principal(name)
    assert member_index(name) == pki_member(name)
