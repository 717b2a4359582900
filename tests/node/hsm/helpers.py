"""Test-only access to a slot's raw objects, to move or tamper with stored blobs."""

from __future__ import annotations

from pkcs11 import Attribute, ObjectClass

from node.hsm import aad
from node.hsm.memory import MemorySlot
from node.hsm.pkcs11_slot import Pkcs11Slot
from node.hsm.slot import ShareId


def raw_data_labels(slot: Pkcs11Slot) -> list[str]:
    """Every CKO_DATA label on the token (any application)."""
    objs = slot._session.get_objects({Attribute.CLASS: ObjectClass.DATA})
    return sorted(o[Attribute.LABEL] for o in objs)


def read_blob(slot: Pkcs11Slot | MemorySlot, sid: ShareId) -> bytes:
    label = aad.share_label(sid)
    if isinstance(slot, MemorySlot):
        return slot._raw_objects()[label]
    return bytes(next(slot._find_data(label))[Attribute.VALUE])


def move_blob(slot: Pkcs11Slot | MemorySlot, src: ShareId, dst: ShareId) -> None:
    """Relabel a stored blob so it claims to be `dst`."""
    if isinstance(slot, MemorySlot):
        objs = slot._raw_objects()
        objs[aad.share_label(dst)] = objs.pop(aad.share_label(src))
        return
    obj = next(slot._find_data(aad.share_label(src)))
    obj[Attribute.LABEL] = aad.share_label(dst)


def put_blob(slot: Pkcs11Slot | MemorySlot, sid: ShareId, value: bytes) -> None:
    """Write a raw value under `sid`'s label, replacing any object there."""
    label = aad.share_label(sid)
    if isinstance(slot, MemorySlot):
        slot._raw_objects()[label] = value
        return
    for obj in list(slot._find_data(label)):
        obj.destroy()
    slot._session.create_object(
        {
            Attribute.CLASS: ObjectClass.DATA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.LABEL: label,
            Attribute.APPLICATION: aad.APPLICATION,
            Attribute.VALUE: value,
        }
    )
