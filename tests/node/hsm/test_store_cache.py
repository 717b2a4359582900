"""`Pkcs11Slot.store_share` and the handle cache: an existing share is found through
its cached handle (no token search), and the cache never stands in for the token.

A cached handle counts only if the object still carries the share's label when the
store reads it back: an object destroyed or relabelled since (by this slot, another
session or another process) is never set aside, destroyed or taken for an existing
share, and a label the cache does not know is searched for on the token.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from node.hsm import aad
from node.hsm.errors import ModuleFailureError, ShareExistsError, ShareNotFoundError
from node.hsm.pkcs11_slot import Pkcs11Slot
from node.hsm.slot import ShareId

from .conftest import Node
from .helpers import move_blob, put_blob, raw_data_labels, read_blob

CHILD = Path(__file__).with_name("child_slot.py")


def _objects(slot: Pkcs11Slot, sid: ShareId) -> list[object]:
    """Every object on the token carrying `sid`'s label (a search, bypassing the cache)."""
    return list(slot._find_data(aad.share_label(sid)))


def _no_leftovers(slot: Pkcs11Slot) -> bool:
    labels = raw_data_labels(slot)
    return not any(lb.startswith((aad.TEMP_LABEL_PREFIX, aad.OLD_LABEL_PREFIX)) for lb in labels)


def _forbid_search(slot: Pkcs11Slot, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make a token search by the slot fail loudly; returns the labels it was asked for."""
    asked: list[str] = []

    def search(label: str) -> object:
        asked.append(label)
        raise AssertionError(f"token searched for {label}")

    monkeypatch.setattr(slot, "_find_data", search)
    return asked


def test_replace_of_a_known_share_uses_the_cached_handle(
    slot_a: Pkcs11Slot, sid: ShareId, monkeypatch: pytest.MonkeyPatch
) -> None:
    slot_a.store_share(sid, b"\x01" * 32)
    with monkeypatch.context() as m:
        _forbid_search(slot_a, m)
        slot_a.store_share(sid, b"\x02" * 32, replace=True)
        with pytest.raises(ShareExistsError):
            slot_a.store_share(sid, b"\x03" * 32)
        assert slot_a.load_share(sid) == b"\x02" * 32
    assert len(_objects(slot_a, sid)) == 1
    assert _no_leftovers(slot_a)
    assert slot_a.list_shares(sid.key_id) == [sid]


def test_replaced_object_is_destroyed_and_not_cached(slot_a: Pkcs11Slot, sid: ShareId) -> None:
    slot_a.store_share(sid, b"\x01" * 32)
    old = slot_a._handles[aad.share_label(sid)]
    slot_a.store_share(sid, b"\x02" * 32, replace=True)
    new = slot_a._handles[aad.share_label(sid)]
    assert new is not old
    with pytest.raises(p11e.ObjectHandleInvalid):
        old[Attribute.LABEL]  # destroyed on the token
    assert slot_a.load_share(sid) == b"\x02" * 32
    assert len(_objects(slot_a, sid)) == 1


def test_store_after_the_object_was_destroyed_behind_the_slot(
    slot_a: Pkcs11Slot, sid: ShareId
) -> None:
    slot_a.store_share(sid, b"\x01" * 32)
    for obj in _objects(slot_a, sid):  # another session's handle, same object
        obj.destroy()  # type: ignore[attr-defined]
    slot_a.store_share(sid, b"\x02" * 32)  # no stale "exists" from the cache
    assert slot_a.load_share(sid) == b"\x02" * 32
    assert len(_objects(slot_a, sid)) == 1


def test_store_after_the_object_was_relabelled_behind_the_slot(
    slot_a: Pkcs11Slot, sid: ShareId
) -> None:
    """The cached handle now names another share's object: it is neither taken for
    an existing share nor set aside and destroyed by a replace."""
    other = dataclasses.replace(sid, generation=sid.generation + 1)
    slot_a.store_share(sid, b"\x01" * 32)
    moved = read_blob(slot_a, sid)
    move_blob(slot_a, sid, other)
    slot_a.store_share(sid, b"\x02" * 32)
    slot_a.store_share(sid, b"\x03" * 32, replace=True)
    assert slot_a.load_share(sid) == b"\x03" * 32
    assert read_blob(slot_a, other) == moved  # untouched
    assert len(_objects(slot_a, sid)) == 1 and len(_objects(slot_a, other)) == 1
    assert _no_leftovers(slot_a)


def test_object_created_behind_the_slot_is_found_by_a_store(
    slot_a: Pkcs11Slot, sid: ShareId
) -> None:
    """A label the cache does not know is searched for on the token."""
    donor = dataclasses.replace(sid, index=sid.index + 1)
    slot_a.store_share(donor, b"\x01" * 32)
    put_blob(slot_a, sid, read_blob(slot_a, donor))  # an object the slot never made
    assert aad.share_label(sid) not in slot_a._handles
    with pytest.raises(ShareExistsError):
        slot_a.store_share(sid, b"\x02" * 32)
    slot_a.store_share(sid, b"\x03" * 32, replace=True)
    assert slot_a.load_share(sid) == b"\x03" * 32
    assert len(_objects(slot_a, sid)) == 1
    assert _no_leftovers(slot_a)


def test_failed_replace_leaves_a_coherent_cache(
    slot_a: Pkcs11Slot, sid: ShareId, monkeypatch: pytest.MonkeyPatch
) -> None:
    slot_a.store_share(sid, b"\x01" * 32)

    def fail(self: Pkcs11Slot, obj: object, label: str) -> None:
        raise p11e.FunctionFailed()

    with monkeypatch.context() as m:
        m.setattr(Pkcs11Slot, "_relabel", fail)
        with pytest.raises(ModuleFailureError):
            slot_a.store_share(sid, b"\x02" * 32, replace=True)
    with monkeypatch.context() as m:
        _forbid_search(slot_a, m)  # the old object is back under its label, still cached
        assert slot_a.load_share(sid) == b"\x01" * 32
        slot_a.store_share(sid, b"\x03" * 32, replace=True)
    assert slot_a.load_share(sid) == b"\x03" * 32
    assert len(_objects(slot_a, sid)) == 1
    assert _no_leftovers(slot_a)


def _child(node: Node, mode: str, sid: ShareId, *args: str) -> None:
    cfg = dataclasses.asdict(node.config())
    proc = subprocess.run(
        [sys.executable, str(CHILD), mode, json.dumps(cfg),
         json.dumps([sid.key_id, sid.version, sid.index, sid.generation]), *args],
        capture_output=True, text=True, env=node.env.child_env(), timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_changes_by_another_process_are_seen_by_a_store(
    slot_a: Pkcs11Slot, fleet: object, sid: ShareId
) -> None:
    """Another process replaces, then destroys, a share this slot has cached."""
    node: Node = fleet.a  # type: ignore[attr-defined]
    slot_a.store_share(sid, b"\x01" * 32)
    assert slot_a.load_share(sid) == b"\x01" * 32  # cached
    _child(node, "replace", sid, (b"\x02" * 32).hex())  # our cached object is destroyed
    with pytest.raises(ShareExistsError):  # the other process's object is found
        slot_a.store_share(sid, b"\x03" * 32)
    assert slot_a.load_share(sid) == b"\x02" * 32
    slot_a.store_share(sid, b"\x04" * 32, replace=True)
    assert slot_a.load_share(sid) == b"\x04" * 32
    assert len(_objects(slot_a, sid)) == 1
    _child(node, "destroy", sid)
    assert not slot_a.has_share(sid)
    with pytest.raises(ShareNotFoundError):
        slot_a.load_share(sid)
    slot_a.store_share(sid, b"\x05" * 32)  # gone: a plain store succeeds
    assert slot_a.load_share(sid) == b"\x05" * 32
    assert len(_objects(slot_a, sid)) == 1
    assert _no_leftovers(slot_a)


def test_an_object_of_another_application_under_a_share_label_is_not_a_share(
    slot_a: Pkcs11Slot, sid: ShareId
) -> None:
    """The token search matches class, label and application, whatever their order."""
    foreign = slot_a._session.create_object(
        {
            Attribute.CLASS: ObjectClass.DATA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.LABEL: aad.share_label(sid),
            Attribute.APPLICATION: "another-application",
            Attribute.VALUE: b"\x00" * 45,
        }
    )
    try:
        assert not slot_a.has_share(sid)
        slot_a.store_share(sid, b"\x01" * 32)  # no ShareExistsError
        slot_a.store_share(sid, b"\x02" * 32, replace=True)
        assert slot_a.load_share(sid) == b"\x02" * 32
        slot_a.destroy_share(sid)
        assert not slot_a.has_share(sid)
        assert foreign[Attribute.APPLICATION] == "another-application"  # untouched
        assert foreign[Attribute.LABEL] == aad.share_label(sid)
    finally:
        foreign.destroy()



def test_destroy_shares_removes_exactly_the_named_shares_in_one_pass(any_slot) -> None:
    """A batch erasure (old generations after a refresh) removes every named share and
    nothing else; absent ids are skipped. On the token and in memory alike."""
    import uuid

    from node.hsm.errors import ShareNotFoundError

    tag = uuid.uuid4().hex[:8]
    keep = ShareId(f"k-keep-{tag}", 1, 1, 0)
    gone = [ShareId(f"k-old-{tag}", v, 1, 0) for v in (1, 2, 3)]
    for s in (keep, *gone):
        any_slot.store_share(s, bytes(range(32)))
    assert any_slot.destroy_shares([*gone, ShareId(f"k-absent-{tag}", 1, 1, 0)]) == 3
    assert keep in any_slot.list_shares() and not set(gone) & set(any_slot.list_shares())
    for s in gone:
        with pytest.raises(ShareNotFoundError):
            any_slot.load_share(s)
    assert bytes(any_slot.load_share(keep)) == bytes(range(32))
