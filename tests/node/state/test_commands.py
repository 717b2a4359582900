"""Strict decoding of commands: bounded, schema-checked, canonical; bad bytes change nothing."""

from __future__ import annotations

import msgpack
import pytest

from node.state import (
    COMMANDS,
    AddMember,
    AddPrincipal,
    AdvanceEpoch,
    Approve,
    CancelRequest,
    CreateGrant,
    CreateKey,
    DecodeError,
    EscrowItem,
    ExportKey,
    Machine,
    OfficerApprove,
    OfficerSpec,
    PostAuditCheckpoint,
    PostCheckpoint,
    PostDkgRound1,
    PostEscrow,
    PostExportPiece,
    PostRelease,
    RecordDkgResult,
    RecordErasure,
    RecordFailure,
    RecordRecovery,
    RecordResult,
    RecoverMembers,
    RecoverSpec,
    RekeyPrincipal,
    ReleaseItem,
    RemoveMember,
    RemovePrincipal,
    RequestDecrypt,
    RequestDestroy,
    RequestRevoke,
    RequestRollback,
    RequestRotate,
    RequestSign,
    RevokeGrant,
    SetGovernance,
    SetOfficers,
    SetThreshold,
    decode_command,
    decode_outcome,
    encode_command,
)
from node.state.commands import (
    MAX_COMMAND_BYTES,
    MAX_DKG_PACKAGE_BYTES,
    MAX_PAYLOAD_BYTES,
    CreateAlias,
    DeleteAlias,
    PostRefresh,
    PostRepair,
    RecordRefresh,
    RecordRepair,
    RepairMember,
    ReportRefresh,
    ReportRepair,
    SetKeyMetadata,
    StartRefresh,
)


def samples(world):
    return [world.signed(c) for c in _samples(world)]


def _samples(world):
    return [
        world.bootstrap_command(),
        AddPrincipal("r1", "ops", "dave", "approver", world.public_key("dave")),
        world.policy_command(),
        AdvanceEpoch("r2", "node-1", 7, 1_700_000_000),
        CreateKey("r3", "ops", "k1", "encrypt", "p1", 0),
        RequestSign("r4", "app", "k1", 0, "release v1", b"\x00" * 100),
        RequestDecrypt("r5", "app", "k1", 2, "", b"\xff" * 48),
        RequestRotate("r6", "node-2", "k1", 5, 12),
        RequestRevoke("r7", "ops", "k1", 1),
        RequestRollback("r7b", "ops", "k1", 1),
        RequestDestroy("r8", "ops", "k1", 1),
        Approve("r9", "alice", "app:r4", bytes(64)),
        RecordDkgResult("r10", "node-3", "ops:r3", world.GPK, world.VSHARES),
        RecordResult("r11", "node-1", "app:r4", bytes(64)),
        RecordFailure("r12", "node-1", "app:r4", "timeout"),
        RemovePrincipal("r13", "ops", "dave"),
        RekeyPrincipal("r14", "ops", "alice", world.public_key("alice2")),
        SetGovernance("r15", "ops", ("alice", "bob"), 2, 5),
        SetThreshold("r16", "ops", 3),
        AddMember("r17", "ops", "node-4", 4, world.public_key("node-4")),
        RemoveMember("r18", "ops", "node-3"),
        CancelRequest("r19", "alice", "ops:r15"),
        PostCheckpoint("checkpoint-20", "node-2", 20, bytes(64), bytes(64)),
        PostDkgRound1("r21", "node-1", "ops:r3", b"\x02" * 300),
        RecordErasure("erase-k1-1", "node-3", "k1", 1),
        CreateGrant("r22", "ops", "g1", "app", "k1", ("sign",), "ci/", "prefix", 10, 40),
        RevokeGrant("r23", "alice", "g1"),
        PostAuditCheckpoint("audit-checkpoint-5", "node-1", 5, bytes(64), 1, 1, bytes(64)),
        RequestSign("r24", "app", "k1", 0, "ci/x", b"m", grant="g1", signature=bytes(64)),
        RequestDecrypt("r25", "app", "k1", 1, "c", b"ct", grant="g1", signature=bytes(64)),
        CreateKey("r26", "ops", "k2", "sign", "p1", 0, "team-a", "d", (("env", "prod"),)),
        SetKeyMetadata("r27", "ops", "k1", "", "", ()),
        SetKeyMetadata("r28", "ops", "k1", "o", "x" * 1024, (("a", ""), ("b/c", "v"))),
        CreateAlias("r29", "ops", "payments-signing", "k1"),
        DeleteAlias("r30", "ops", "payments-signing"),
        RepairMember("r31", "ops", "node-2", world.public_key("node-2b")),
        RepairMember("r32", "ops", "node-2"),
        PostRepair("repair-post-node-2-1", "node-1", "node-2", 1, b"\x01" * 500),
        RecordRepair("repair-done-node-2-1", "node-2", "node-2", 1),
        ReportRepair("repair-fail-node-2-1", "node-3", "node-2", 1, ("node-1",), "bad pieces"),
        StartRefresh("r33", "ops"),
        PostRefresh("refresh-post-1", "node-1", 1, b"\x01" * 500),
        RecordRefresh("refresh-rec-1", "node-2", 1, ((bytes(32),) * 3,) * 2),
        ReportRefresh("refresh-fail-1", "node-3", 1, (), "restarted"),
        SetOfficers("r34", "ops", (OfficerSpec("olga", bytes(32), world.public_key("olga")),
                                   OfficerSpec("omar", b"\x01" * 32, world.public_key("omar"))), 2),
        PostEscrow("escrow-1", "node-1", bytes(64), (EscrowItem("k1", 1, 0, b"\x02" * 300),)),
        RecoverMembers("r35", "ops", (RecoverSpec("node-1", world.public_key("node-1b"),
                                                  b"\x03" * 32),)),
        OfficerApprove("r36", "ops", "ops:r35", "olga", bytes(64)),
        PostRelease("r37", "ops", "node-1", "olga", (ReleaseItem("k1", 1, b"\x04" * 90),),
                    bytes(64)),
        RecordRecovery("recovered-1", "node-1", "node-1"),
        ExportKey("r38", "ops", "k1", 1, b"\x05" * 32, "court order 12"),
        PostExportPiece("export-1", "node-1", "ops:r38", b"\x06" * 92),
    ]


def raw_of(cmd) -> dict:
    return msgpack.unpackb(encode_command(cmd), raw=False)


def pack(raw) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


def test_every_kind_roundtrips_canonically(world):
    cmds = samples(world)
    assert {c.KIND for c in cmds} == set(COMMANDS)
    for cmd in cmds:
        data = encode_command(cmd)
        assert decode_command(data) == cmd
        assert encode_command(decode_command(data)) == data


def test_field_order_does_not_matter_for_decoding(world):
    cmd = RequestSign("r4", "app", "k1", 0, "ctx", b"msg")
    raw = raw_of(cmd)
    assert decode_command(pack(dict(reversed(list(raw.items()))))) == cmd


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(extra=1), "unknown field"),
        (lambda r: r.pop("context"), "missing field"),
        (lambda r: r.update(version=True), "integer"),
        (lambda r: r.update(version=1.0), "integer"),
        (lambda r: r.update(version=-1), "integer"),
        (lambda r: r.update(version=1 << 40), "integer"),
        (lambda r: r.update(message="text"), "bytes"),
        (lambda r: r.update(message=b""), "length"),
        (lambda r: r.update(context="x" * 257), "too long"),
        (lambda r: r.update(context="line\nbreak"), "printable"),
        (lambda r: r.update(key_id="bad key"), "identifier"),
        (lambda r: r.update(key_id=""), "identifier"),
        (lambda r: r.update(key_id="k" * 65), "identifier"),
        (lambda r: r.update(request_id=b"r4"), "identifier"),
        (lambda r: r.update(author=None), "principal name"),
        (lambda r: r.update(author="App"), "principal name"),
        (lambda r: r.update(kind="sign_anything"), "unknown command kind"),
        (lambda r: r.update(v=2), "schema version"),
        (lambda r: r.pop("v"), "schema version"),
    ],
)
def test_schema_violations_rejected(mutate, message):
    raw = raw_of(RequestSign("r4", "app", "k1", 0, "ctx", b"msg"))
    mutate(raw)
    with pytest.raises(DecodeError, match=message):
        decode_command(pack(raw))


def test_list_bounds_and_item_types(world):
    raw = raw_of(world.signed(world.policy_command()))
    raw["approvers"] = ["a"] * 2
    with pytest.raises(DecodeError, match="duplicate"):
        decode_command(pack(raw))
    raw["approvers"] = [f"a{i}" for i in range(65)]
    with pytest.raises(DecodeError, match="at most"):
        decode_command(pack(raw))
    raw["approvers"] = "alice"
    with pytest.raises(DecodeError, match="list"):
        decode_command(pack(raw))
    raw = raw_of(world.signed(world.bootstrap_command()))
    raw["members"][0]["public_key"] = b"\x01" * 31
    with pytest.raises(DecodeError, match=r"members\[0\]\.public_key"):
        decode_command(pack(raw))
    raw = raw_of(world.signed(world.bootstrap_command()))
    raw["members"][0]["surprise"] = 1
    with pytest.raises(DecodeError, match="unknown field"):
        decode_command(pack(raw))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        pack([1, 2, 3]),
        pack({1: "int key"}),
        pack("just a string"),
        msgpack.packb({"v": 1}, use_bin_type=True) + b"trailing",
        pack({"v": 1, "kind": "approve", "x": msgpack.ExtType(1, b"e")}),
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than any command
    ],
)
def test_garbage_rejected(data):
    with pytest.raises(DecodeError):
        decode_command(data)


def test_size_bounds():
    raw = raw_of(RequestSign("r4", "app", "k1", 0, "ctx", b"m"))
    raw["message"] = b"\x00" * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(DecodeError):
        decode_command(pack(raw))
    with pytest.raises(DecodeError, match="exceeds"):
        decode_command(b"\x00" * (MAX_COMMAND_BYTES + 1))
    raw["message"] = b"\x00" * MAX_PAYLOAD_BYTES
    assert decode_command(pack(raw)).message == b"\x00" * MAX_PAYLOAD_BYTES


def test_malformed_bytes_change_nothing(world):
    m = Machine(genesis=world.m.genesis)
    m.apply(encode_command(world.signed(world.bootstrap_command())))
    before = m.snapshot()
    raw = raw_of(world.signed(world.policy_command()))
    raw["k"] = "2"
    out = decode_outcome(m.apply(pack(raw)))
    assert not out.ok and out.code == "malformed" and "k" in out.detail
    assert m.snapshot() == before  # not even an audit record: nothing to attribute it to


def test_encoder_refuses_invalid_values(world):
    with pytest.raises(DecodeError):
        encode_command(RequestSign("r", "app", "k1", 0, "ctx", b""))


def test_outcome_encoding_roundtrip_and_strictness(world):
    from node.state import Outcome, encode_outcome

    out = Outcome("r1", False, "bad_signature", "detail", 7)
    assert decode_outcome(encode_outcome(out)) == out
    for bad in (
        b"\xc1",
        msgpack.packb({"v": 1}),
        msgpack.packb(
            {"v": 2, "request_id": "r", "ok": True, "code": "ok", "detail": "", "seq": 0}
        ),
        msgpack.packb({"v": 1, "request_id": "r", "ok": 1, "code": "ok", "detail": "", "seq": 0}),
    ):
        with pytest.raises(DecodeError):
            decode_outcome(bad)


def test_text_rule_does_not_depend_on_unicode_tables():
    """Regression (issue 9.2): `str.isprintable()` follows the interpreter's Unicode
    tables: U+1F6DC (new in Unicode 15) was refused on Python 3.11 and accepted on 3.12,
    so replicas on two versions forked. Text is printable ASCII, checked over every code
    point, so a table-dependent rule cannot pass."""
    from node.state.commands import Text

    spec = Text(max_chars=1)
    accepted = []
    for cp in range(0x110000):
        try:
            spec.check(chr(cp), "t")
        except DecodeError:
            continue
        accepted.append(cp)
    assert accepted == list(range(0x20, 0x7F))
    with pytest.raises(DecodeError, match="ASCII"):
        decode_command(pack(raw_of(RequestSign("r", "app", "k1", 0, "ok", b"m")) | {
            "context": "wireless \U0001f6dc"}))  # fmt: skip


def test_dkg_round1_package_bounds(world):
    """A round-1 package is 1..16384 opaque bytes; a signature is required."""
    ok = world.signed(PostDkgRound1("r", "node-1", "ops:ck", b"p" * MAX_DKG_PACKAGE_BYTES))
    assert decode_command(encode_command(ok)) == ok
    raw = raw_of(ok)
    for bad, message in (
        (b"", "length"),
        (b"p" * (MAX_DKG_PACKAGE_BYTES + 1), "length"),
        ("text", "bytes"),
    ):
        with pytest.raises(DecodeError, match=message):
            decode_command(pack({**raw, "package": bad}))
    for mutate, message in (
        (lambda r: r.pop("signature"), "missing field"),
        (lambda r: r.update(request="no-author"), "request reference"),
    ):
        broken = dict(raw)
        mutate(broken)
        with pytest.raises(DecodeError, match=message):
            decode_command(pack(broken))
