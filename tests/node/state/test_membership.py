"""Membership through the log: the replicated address book, who holds which version,
and removals that would leave a usable version with fewer than t holders."""

from __future__ import annotations

from node.state import AddMember, Reason, RemoveMember, RepairMember
from node.state.commands import decode_command, encode_command
from node.state.model import Address

from .conftest import World


def add4(w: World, **addr: str):
    return w.govern(AddMember(w.rid("am"), "ops", "node-4", 4, w.public_key("node-4"), **addr))


def test_a_new_members_addresses_go_into_the_replicated_address_book(ready: World):
    add4(ready, raft_address="10.0.0.4:7000", api_address="node-4.example:8443")
    assert ready.m.state.addresses["node-4"] == Address("10.0.0.4:7000", "node-4.example:8443")


def test_both_addresses_or_neither(ready: World):
    cmd = AddMember("am-x", "ops", "node-4", 4, ready.public_key("node-4"),
                    raft_address="10.0.0.4:7000")  # fmt: skip
    ready.rejects(cmd, Reason.INVALID_ARGUMENT)


def test_addresses_are_strictly_checked_and_optional_in_the_encoding(ready: World):
    import pytest

    from node.state.errors import DecodeError

    sig = bytes(64)
    plain = AddMember("a", "ops", "node-4", 4, ready.public_key("node-4"), sig)
    assert b"raft_address" not in encode_command(plain)  # old encodings stay canonical
    for bad in ("10.0.0.4", "10.0.0.4:0", "10.0.0.4:70000", "-x:1", "a b:1"):
        with pytest.raises(DecodeError):
            encode_command(AddMember("a", "ops", "node-4", 4, ready.public_key("node-4"), sig,
                                     raft_address=bad, api_address="h:1"))  # fmt: skip
    good = AddMember("a", "ops", "node-4", 4, ready.public_key("node-4"), sig,
                     raft_address="h:1", api_address="h:2")  # fmt: skip
    assert decode_command(encode_command(good)) == good


def test_a_member_that_joined_later_holds_no_share_of_older_versions(ready: World):
    ready.active_key("k1")
    add4(ready)
    assert not ready.m.holds("node-4", "k1", 1)
    assert ready.m.holds("node-1", "k1", 1)


def test_removal_refused_when_a_usable_version_would_have_fewer_than_t_holders(ready: World):
    ready.active_key("k1")
    add4(ready)
    ready.govern(RemoveMember(ready.rid("rm"), "ops", "node-1"))  # 2 holders left: ok (t=2)
    assert "node-1" not in ready.m.state.members
    out = ready.rejects(RemoveMember("rm-2", "ops", "node-2"), Reason.INVALID_CLUSTER)
    assert "k1 v1" in out.detail


def test_removal_drops_the_address(ready: World):
    add4(ready, raft_address="h:1", api_address="h:2")
    ready.govern(RemoveMember(ready.rid("rm"), "ops", "node-4"))
    assert "node-4" not in ready.m.state.addresses


def test_a_replacement_moves_the_members_address_after_the_time_lock(ready: World):
    ready.active_key("k1")
    out = ready.ok(RepairMember("rp", "ops", "node-3", ready.public_key("node-3b"),
                                raft_address="new:1", api_address="new:2"))  # fmt: skip
    assert "WEAKENING" in out.detail
    req = ready.req("rp")
    ready.approve(req.ref, "alice")
    ready.approve(req.ref, "bob")
    assert "node-3" not in ready.m.state.addresses  # not before the time lock
    ready.advance(by=req.effective_epoch - ready.m.state.epoch)
    assert ready.m.state.addresses["node-3"] == Address("new:1", "new:2")
    assert ready.m.state.members["node-3"].public_key == ready.public_key("node-3b")
