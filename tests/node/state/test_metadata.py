"""Key metadata (owner, description, tags) and aliases (docs/metadata.md): strict
commands, immediate operator changes that grant nothing, aliases bound to one key for
ever, snapshots that round-trip and refuse what the machine would never produce."""

from __future__ import annotations

import msgpack
import pytest

from node.state import CreateKey, DecodeError, Reason, decode_command, encode_command
from node.state.audit_checkpoint import AUDIT_KEY_ID
from node.state.commands import CreateAlias, DeleteAlias, SetKeyMetadata
from node.state.digest import command_digest
from node.state.metadata import MAX_ALIASES, metadata_hash
from node.state.model import Alias
from node.state.snapshot import decode_state, encode_state

TAGS = (("cost-center", "42"), ("env", "prod"), ("team/owner", "payments"))


def raw_of(cmd) -> dict:
    return msgpack.unpackb(encode_command(cmd), raw=False)


def pack(raw) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


# ---------------------------------------------------------------- commands


def test_create_key_without_metadata_encodes_as_before():
    plain = CreateKey("r1", "ops", "k1", "sign", "p1", 0, signature=bytes(64))
    raw = raw_of(plain)
    assert not {"owner", "description", "tags"} & set(raw)
    meta = CreateKey("r1", "ops", "k1", "sign", "p1", 0, "team", "desc", TAGS, bytes(64))
    assert decode_command(encode_command(meta)) == meta
    assert raw_of(meta)["tags"] == [list(t) for t in TAGS]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(owner="o" * 129), "too long"),
        (lambda r: r.update(owner="tab\there"), "printable"),
        (lambda r: r.update(description="d" * 1025), "too long|not a valid msgpack"),
        (lambda r: r.update(description="caf\u00e9"), "printable"),
        (lambda r: r.update(description="line\nbreak"), "printable"),
        (lambda r: r.update(tags=[["b", "1"], ["a", "2"]]), "sorted"),
        (lambda r: r.update(tags=[["a", "1"], ["a", "2"]]), "unique"),
        (lambda r: r.update(tags=[["Env", "x"]]), "tag key"),
        (lambda r: r.update(tags=[["-x", "x"]]), "tag key"),
        (lambda r: r.update(tags=[["k" * 64, "x"]]), "tag key"),
        (lambda r: r.update(tags=[["a", "v" * 257]]), "too long"),
        (lambda r: r.update(tags=[["a", 1]]), "string"),
        (lambda r: r.update(tags=[["a"]]), "pair"),
        (lambda r: r.update(tags={"a": "b"}), "list"),
        (lambda r: r.update(tags=[[f"t{i:02}", ""] for i in range(33)]), "at most 32"),
        (lambda r: r.pop("tags"), "missing"),
    ],
)
def test_set_key_metadata_is_bounded(mutate, message):
    raw = raw_of(SetKeyMetadata("r1", "ops", "k1", "o", "d", (("a", "b"),), bytes(64)))
    mutate(raw)
    with pytest.raises(DecodeError, match=message):
        decode_command(pack(raw))


@pytest.mark.parametrize("field", ["owner", "description", "tags"])
def test_create_key_optional_metadata_has_one_encoding(field):
    """Present but empty is refused: an absent field is its default (one encoding)."""
    raw = raw_of(CreateKey("r1", "ops", "k1", "sign", "p1", 0, signature=bytes(64)))
    raw[field] = [] if field == "tags" else ""
    with pytest.raises(DecodeError, match="must not be empty"):
        decode_command(pack(raw))


@pytest.mark.parametrize("name", ["Payments", "-x", "a" * 65, "a b", "a:b", "a@b", "", "a/b"])
def test_alias_names_are_bounded(name):
    raw = raw_of(CreateAlias("r1", "ops", "ok-name", "k1", bytes(64)))
    raw["alias"] = name
    with pytest.raises(DecodeError, match="alias name"):
        decode_command(pack(raw))


# ---------------------------------------------------------------- metadata


def test_metadata_on_create_and_set_at_once_audited_by_hash(ready):
    w = ready
    rid = w.rid("ck")
    w.ok(CreateKey(rid, "ops", "k1", "sign", "p1", 0, "team-a", "first", TAGS))
    key = w.m.state.keys["k1"]
    assert (key.owner, key.description, key.tags) == ("team-a", "first", dict(TAGS))
    digest_before = w.req(rid).digest
    out = w.ok(SetKeyMetadata(w.rid(), "ops", "k1", "team-b", "second", (("env", "dev"),)))
    assert out.code == "ok"
    assert (key.owner, key.description, key.tags) == ("team-b", "second", {"env": "dev"})
    rec = w.m.state.audit[out.seq]
    assert (rec.kind, rec.key_id, rec.outcome) == ("set_key_metadata", "k1", "ok")
    assert rec.digest == metadata_hash("team-b", "second", {"env": "dev"})
    # The pending create request (what approvers sign) is untouched by metadata.
    assert w.req(rid).digest == digest_before
    w.approve(rid, "alice")
    w.approve(rid, "bob")
    w.post_dkg(rid)
    w.advance()
    assert w.m.active_version("k1") == 1
    w.ok(SetKeyMetadata(w.rid(), "ops", "k1", "", "", ()))
    assert (key.owner, key.description, key.tags) == ("", "", {})


def test_create_key_request_digest_does_not_depend_on_metadata(world):
    """What approvers sign is the same with or without (misleading) metadata."""
    from tests.node.state.conftest import World

    plain = World().setup()
    labelled = world.setup()
    plain.ok(CreateKey("ck", "ops", "kb", "sign", "p1", 0))
    labelled.ok(CreateKey("ck", "ops", "kb", "sign", "p1", 0, "x", "safe to sign anything", TAGS))
    assert plain.req("ck").digest == labelled.req("ck").digest


@pytest.mark.parametrize("who", ["alice", "app", "aud", "node-1"])
def test_only_operators_set_metadata(ready, who):
    w = ready
    w.active_key("k1")
    w.rejects(SetKeyMetadata(w.rid(), who, "k1", "x", "y", ()), Reason.UNAUTHORIZED)


def test_metadata_refusals_change_nothing(ready):
    w = ready
    w.active_key("k1")
    w.rejects(SetKeyMetadata(w.rid(), "ops", "nope", "x", "", ()), Reason.UNKNOWN_KEY)
    # The reserved audit key carries no metadata.
    w.rejects(SetKeyMetadata(w.rid(), "ops", AUDIT_KEY_ID, "x", "", ()), Reason.WRONG_PURPOSE)
    forged = SetKeyMetadata(w.rid(), "ops", "k1", "x", "", (), bytes(64))
    w.rejects(forged, Reason.BAD_SIGNATURE)


# ---------------------------------------------------------------- aliases


def test_alias_lifecycle_and_resolution(ready):
    w = ready
    w.active_key("k1")
    w.active_key("k2")
    out = w.ok(CreateAlias(w.rid(), "ops", "payments-signing", "k1"))
    assert w.m.state.audit[out.seq].key_id == "k1"
    assert w.m.resolve("payments-signing") == "k1"
    assert w.m.resolve("k2") == "k2" and w.m.resolve("nope") is None
    # A live alias is never repointed.
    w.rejects(CreateAlias(w.rid(), "ops", "payments-signing", "k2"), Reason.ALIAS_EXISTS)
    w.rejects(CreateAlias(w.rid(), "ops", "payments-signing", "k1"), Reason.ALIAS_EXISTS)
    out = w.ok(DeleteAlias(w.rid(), "ops", "payments-signing"))
    assert w.m.state.audit[out.seq].key_id == "k1"
    assert w.m.resolve("payments-signing") is None
    w.rejects(DeleteAlias(w.rid(), "ops", "payments-signing"), Reason.UNKNOWN_ALIAS)
    # Deleted, the name stays bound to k1: it can come back for k1, never for k2.
    w.rejects(CreateAlias(w.rid(), "ops", "payments-signing", "k2"), Reason.ALIAS_EXISTS)
    w.ok(CreateAlias(w.rid(), "ops", "payments-signing", "k1"))
    assert w.m.resolve("payments-signing") == "k1"
    assert w.m.state.aliases["payments-signing"].deleted_epoch == 0


def test_aliases_and_key_ids_never_collide(ready):
    w = ready
    w.active_key("k1")
    w.active_key("k2")
    w.rejects(CreateAlias(w.rid(), "ops", "k2", "k1"), Reason.DUPLICATE_NAME)
    w.ok(CreateAlias(w.rid(), "ops", "a1", "k1"))
    w.ok(DeleteAlias(w.rid(), "ops", "a1"))
    for name in ("a1",):  # deleted names stay reserved against key ids too
        w.rejects(CreateKey(w.rid(), "ops", name, "sign", "p1"), Reason.DUPLICATE_NAME)
    w.rejects(CreateAlias(w.rid(), "ops", "x", "nope"), Reason.UNKNOWN_KEY)
    w.rejects(CreateAlias(w.rid(), "ops", "audit", AUDIT_KEY_ID), Reason.WRONG_PURPOSE)
    w.rejects(DeleteAlias(w.rid(), "ops", "never"), Reason.UNKNOWN_ALIAS)


@pytest.mark.parametrize("who", ["alice", "app", "aud", "node-2"])
def test_only_operators_manage_aliases(ready, who):
    w = ready
    w.active_key("k1")
    w.rejects(CreateAlias(w.rid(), who, "a1", "k1"), Reason.UNAUTHORIZED)
    w.ok(CreateAlias(w.rid(), "ops", "a1", "k1"))
    w.rejects(DeleteAlias(w.rid(), who, "a1"), Reason.UNAUTHORIZED)


def test_alias_names_are_bounded_in_number(ready):
    w = ready
    w.active_key("k1")
    st = w.m.state
    for i in range(MAX_ALIASES):
        st.aliases[f"n{i}"] = Alias(f"n{i}", "k1", 1, 1)  # deleted ones count too
    w.rejects(CreateAlias(w.rid(), "ops", "one-more", "k1"), Reason.LIMIT_REACHED)
    w.ok(CreateAlias(w.rid(), "ops", "n7", "k1"))  # re-creating a bound name needs none


def test_requests_and_audit_only_name_real_key_ids(ready):
    """Commands carry key ids, never aliases: a request on an alias name is refused."""
    from node.state import RequestSign

    w = ready
    w.active_key("k1")
    w.ok(CreateAlias(w.rid(), "ops", "pay", "k1"))
    w.rejects(RequestSign(w.rid(), "app", "pay", 0, "", b"m"), Reason.UNKNOWN_KEY)


# ---------------------------------------------------------------- snapshots


def _with_metadata(w):
    w.active_key("k1")
    w.active_key("k2")
    w.ok(SetKeyMetadata(w.rid(), "ops", "k1", "team", "the payments key", TAGS))
    w.ok(CreateAlias(w.rid(), "ops", "pay", "k1"))
    w.ok(CreateAlias(w.rid(), "ops", "old", "k2"))
    w.advance()
    w.ok(DeleteAlias(w.rid(), "ops", "old"))
    return w


def test_snapshot_round_trip(ready):
    w = _with_metadata(ready)
    snap = w.snap()
    state = decode_state(snap)
    assert state.keys["k1"].tags == dict(TAGS) and state.keys["k1"].owner == "team"
    assert state.aliases["pay"] == Alias("pay", "k1", w.m.state.aliases["pay"].created_epoch)
    assert state.aliases["old"].deleted_epoch > 0
    assert encode_state(state) == snap
    # A restored replica goes on exactly like the live one.
    from node.state import Machine

    twin = Machine(decode_state(snap), genesis=w.m.genesis)
    cmd = w.signed(CreateAlias("r-twin", "ops", "old", "k1"))
    assert twin.apply_command(cmd) == w.m.apply_command(cmd)
    assert twin.snapshot() == w.snap()
    assert command_digest(encode_command(cmd))


def _refused(w, mutate, message):
    st = decode_state(w.snap())
    mutate(st)
    with pytest.raises(DecodeError, match=message):
        decode_state(encode_state(st))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda st: st.aliases.__setitem__("k2", Alias("k2", "k1", 1)), "also a key id"),
        (lambda st: st.aliases.__setitem__("zz", Alias("zz", "gone", 1)), "missing"),
        (lambda st: st.aliases.__setitem__("zz", Alias("zz", AUDIT_KEY_ID, 1)), "reserved"),
        (lambda st: st.aliases.__setitem__("Zz", Alias("Zz", "k1", 1)), "alias name"),
        (lambda st: st.aliases.__setitem__("zz", Alias("yy", "k1", 1)), "wrong name"),
        (lambda st: st.aliases.__setitem__("zz", Alias("zz", "k1", 0)), "epoch"),
        (lambda st: st.aliases.__setitem__("zz", Alias("zz", "k1", 10**6)), "epoch"),
        (lambda st: st.aliases.__setitem__("zz", Alias("zz", "k1", 2, 1)), "before"),
        (lambda st: setattr(st.keys["k1"], "owner", "o" * 129), "owner"),
        (lambda st: setattr(st.keys["k1"], "description", "bad\x00"), "description"),
        (lambda st: st.keys["k1"].tags.__setitem__("Bad", "x"), "tag key"),
        (lambda st: st.keys["k1"].tags.update({f"t{i}": "" for i in range(40)}), "at most"),
        (lambda st: setattr(st.keys[AUDIT_KEY_ID], "owner", "x"), "audit key"),
    ],
)
def test_snapshot_integrity_refusals(ready, mutate, message):
    _refused(_with_metadata(ready), mutate, message)
