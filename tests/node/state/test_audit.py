"""The audit chain: one record per command, no secrets, and a verifier that catches tampering."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from node.state import (
    GENESIS,
    ChainError,
    DecodeError,
    RecordResult,
    RequestSign,
    decode_records,
    encode_records,
    verify_chain,
)
from node.state.audit import record_hash


@pytest.fixture
def chain(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "ctx", b"top secret message"))
    ready.approve("s1", "alice", signer="bob")  # a rejection is audited too
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.ok(RecordResult("res", "node-1", "s1", ready.result("s1")))
    return ready


def test_every_command_appends_one_linked_record(chain):
    records = chain.m.state.audit
    assert [r.seq for r in records] == list(range(len(records)))
    assert records[0].prev == GENESIS
    for a, b in itertools.pairwise(records):
        assert b.prev == a.hash
    assert verify_chain(records) == chain.m.audit_head() == records[-1].hash
    kinds = [r.kind for r in records]
    assert kinds[0] == "bootstrap" and kinds[-1] == "record_result"
    rejected = [r for r in records if r.outcome.startswith("rejected:")]
    assert [r.outcome for r in rejected] == ["rejected:bad_signature"]
    assert rejected[0].author == "alice" and rejected[0].subject == "app:s1"


def test_request_records_carry_the_request_digest(chain):
    digest = chain.req("s1").digest
    about = [r for r in chain.m.state.audit if r.subject == "app:s1"]
    assert [r.kind for r in about] == [
        "request_sign",
        "approve",
        "approve",
        "approve",
        "record_result",
    ]
    assert all(r.digest == digest and r.key_id == "k1" and r.version == 1 for r in about)
    assert [r.outcome for r in about][-1] == "executed"


def test_records_hold_no_payload_or_signatures(chain):
    blob = encode_records(chain.m.state.audit)
    assert b"top secret message" not in blob
    for sig in chain.req("s1").approvals.values():
        assert sig not in blob
    assert chain.GPK not in blob


def test_verifier_detects_alteration(chain):
    records = list(chain.m.state.audit)
    for field, value in [("author", "mallory"), ("outcome", "ok"), ("epoch", 99), ("digest", b"x")]:
        tampered = list(records)
        tampered[3] = dataclasses.replace(records[3], **{field: value})
        with pytest.raises(ChainError, match="hash") as info:
            verify_chain(tampered)
        assert info.value.seq == 3


def test_verifier_detects_rehashed_alteration(chain):
    records = list(chain.m.state.audit)
    r = dataclasses.replace(records[3], outcome="rejected:unauthorized")
    fields = {f: getattr(r, f) for f in r.__dataclass_fields__ if f != "hash"}
    records[3] = dataclasses.replace(r, hash=record_hash(**fields))
    with pytest.raises(ChainError, match="link") as info:
        verify_chain(records)
    assert info.value.seq == 4


def test_verifier_detects_removal_insertion_reordering(chain):
    records = list(chain.m.state.audit)
    with pytest.raises(ChainError, match="sequence"):
        verify_chain(records[:2] + records[3:])  # removed
    with pytest.raises(ChainError, match="sequence"):
        verify_chain([*records[:3], records[1], *records[3:]])  # inserted (replayed)
    swapped = list(records)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(ChainError):
        verify_chain(swapped)  # reordered
    with pytest.raises(ChainError, match="sequence"):
        verify_chain(records[1:])  # head removed


def test_verifier_detects_renumbered_removal(chain):
    records = list(chain.m.state.audit)
    kept = records[:2] + [dataclasses.replace(r, seq=r.seq - 1) for r in records[3:]]
    with pytest.raises(ChainError):
        verify_chain(kept)


def test_truncation_detected_only_with_expected_head(chain):
    records = list(chain.m.state.audit)
    head = chain.m.audit_head()
    assert verify_chain(records[:-1]) != head  # a prefix verifies on its own...
    with pytest.raises(ChainError, match="head"):
        verify_chain(records[:-1], expected_head=head)  # ...but not against the head
    assert verify_chain(records, expected_head=head) == head


def test_segment_after_checkpoint(chain):
    records = chain.m.state.audit
    tail = records[4:]
    assert verify_chain(tail, start_seq=4, start_prev=records[3].hash) == chain.m.audit_head()
    with pytest.raises(ChainError):
        verify_chain(tail, start_seq=4, start_prev=records[2].hash)


def test_export_roundtrip_and_strict_parse(chain):
    records = chain.m.state.audit
    assert decode_records(encode_records(records)) == records
    with pytest.raises(DecodeError):
        decode_records(b"\x91\x92\x01\x02")  # a row of the wrong width
    with pytest.raises(DecodeError):
        decode_records(b"not msgpack at all \xc1")
    import msgpack

    row = [getattr(records[0], f) for f in records[0].__dataclass_fields__]
    row[0] = "0"
    with pytest.raises(DecodeError, match="seq"):
        decode_records(msgpack.packb([row], use_bin_type=True))


def test_empty_chain(ready):
    assert verify_chain([]) == GENESIS
    with pytest.raises(ChainError):
        verify_chain([], expected_head=ready.m.audit_head())


def test_verify_export_offline(chain):
    from node.state import verify_export

    blob = encode_records(chain.m.state.audit)
    assert verify_export(blob, chain.m.audit_head()) == chain.m.audit_head()
    records = decode_records(blob)
    records[1] = dataclasses.replace(records[1], author="someone-else")
    with pytest.raises(ChainError):
        verify_export(encode_records(records))
