"""The bundle format with the in-memory slot: create, inspect, unlock, open, and every
kind of tampering or misuse that must be refused."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest

from consensus.filestore import FileStorage
from node.backup import bundle as bmod
from node.backup import officers
from node.backup.formats import (
    MANIFEST_FILE,
    PIECES_FILE,
    SNAPSHOT_FILE,
    SUMS_FILE,
    BackupError,
    canonical_json,
    manifest_hash,
    sha256,
)
from node.backup.node_ops import restore
from node.hsm.memory import MemorySlot
from node.hsm.slot import ShareId
from tests.node.backup.conftest import CLUSTER, GENESIS, INDEX, NODE, Env, seeded
from tests.node.state.conftest import public_key


def make(env: Env, out: Path | None = None, *, k: int = 2, snapshot: bool = True,
         rng=os.urandom, slot=None) -> Path:  # fmt: skip
    out = out or env.tmp / "bundle"
    bmod.create_bundle(out, slot=slot or env.slot, cluster_id=CLUSTER, genesis=GENESIS, node=NODE,
                       index=INDEX, snapshot=env.snapshot if snapshot else None,
                       officers=env.publics, k=k, rng=rng)  # fmt: skip
    return out


def files_of(bundle: Path) -> list[str]:
    return sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())


def copy(bundle: Path, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copytree(bundle, dst)
    return dst


def resum(bundle: Path) -> None:
    """Rewrite SHA256SUMS consistently (what anyone with write access can do)."""
    names = [f for f in files_of(bundle) if f != SUMS_FILE]
    (bundle / SUMS_FILE).write_text(
        "".join(f"{sha256((bundle / n).read_bytes())}  {n}\n" for n in sorted(names)))


def rewrite_manifest(bundle: Path, change) -> None:
    """Change the manifest, then fix pieces.json's manifest digest and SHA256SUMS: a
    consistent forgery by someone without the backup key."""
    doc = json.loads((bundle / MANIFEST_FILE).read_text())
    change(doc)
    data = canonical_json(doc)
    (bundle / MANIFEST_FILE).write_bytes(data)
    pieces = json.loads((bundle / PIECES_FILE).read_text())
    pieces["manifest_sha256"] = manifest_hash(data).hex()
    (bundle / PIECES_FILE).write_bytes(canonical_json(pieces))
    resum(bundle)


# ------------------------------------------------------------------ round trip


def test_a_bundle_verifies_with_any_k_officers_and_opens_every_part(env: Env) -> None:
    out = make(env)
    assert files_of(out) == sorted([
        "SHA256SUMS", "manifest.json", "manifest.mac", "pieces.json", "snapshot.enc",
        "shares/k1.v1.i1.g0.blob", "shares/k2.v1.i1.g0.blob"])  # fmt: skip
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in out.rglob("*") if p.is_file())
    b = bmod.inspect(out)
    m = b.manifest
    assert (m.cluster_id, m.genesis, m.node, m.index, m.k) == (CLUSTER, GENESIS, NODE, INDEX, 2)
    assert m.snapshot is not None and (m.snapshot.index, m.snapshot.term) == (40, 3)
    assert [o.name for o in m.officers] == ["alice-o", "bob-o", "carol-o"]
    for pair in itertools.combinations(env.officers, 2):
        key, bad = bmod.unlock(b, list(pair))
        assert len(key) == 32 and bad == []
        contents = bmod.open_contents(b, key)
        assert contents.summary() == {"verified": 2}
        assert contents.snapshot.meta.index == 40
        assert contents.state is not None and contents.state.cluster_id == CLUSTER
    key3, _ = bmod.unlock(b, env.officers)  # all three: same key
    assert key3 == key


def test_no_secret_is_in_the_clear_in_the_bundle(env: Env) -> None:
    draws: list[bytes] = []

    def recording(n: int) -> bytes:
        draws.append(os.urandom(n))
        return draws[-1]

    out = make(env, rng=recording)
    backup_key = draws[1]  # bundle id first, then the backup key
    assert len(backup_key) == 32
    secrets = [backup_key, backup_key.hex().encode(), env.snapshot.snapshot.data[-64:]]
    secrets += [s for values in env.shares.values() for s in values[:1]]
    secrets += [s.hex().encode() for values in env.shares.values() for s in values[:1]]
    for name in files_of(out):
        data = (out / name).read_bytes()
        for secret in secrets:
            assert secret not in data, name


def test_the_manifest_is_canonical_and_strict(env: Env) -> None:
    out = make(env)
    doc = json.loads((out / MANIFEST_FILE).read_text())
    pretty = copy(out, env.tmp, "pretty")
    (pretty / MANIFEST_FILE).write_text(json.dumps(doc, indent=2))
    resum(pretty)
    with pytest.raises(BackupError, match="canonical"):
        bmod.inspect(pretty)
    for change, message in [
        (lambda d: d.update(extra=1), "fields must be exactly"),
        (lambda d: d.update(format="custody-backup/v9"), "format"),
        (lambda d: d.update(k=4), "k must be"),
        (lambda d: d.update(index=2), "does not have index"),
        (lambda d: d["shares"].reverse(), "sorted"),
        (lambda d: d["officers"].reverse(), "sorted"),
        (lambda d: d["shares"][0].update(file="../../etc/passwd"), "file must be"),
        (lambda d: d["shares"][0].update(version=2**40), "version"),
    ]:
        bad = copy(out, env.tmp, f"bad-{len(list(env.tmp.iterdir()))}")
        rewrite_manifest(bad, change)
        with pytest.raises(BackupError, match=message):
            bmod.inspect(bad)


# ------------------------------------------------------------------ tampering


@pytest.mark.parametrize("name", ["SHA256SUMS", "manifest.json", "manifest.mac", "pieces.json",
                                  "snapshot.enc", "shares/k1.v1.i1.g0.blob"])  # fmt: skip
def test_a_flipped_byte_in_any_file_is_detected_without_officers(env: Env, name: str) -> None:
    out = make(env)
    path = out / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BackupError):
        bmod.inspect(out)


@pytest.mark.parametrize("name", ["snapshot.enc", "shares/k2.v1.i1.g0.blob", "manifest.mac"])
def test_a_consistent_rewrite_without_the_key_is_caught_by_the_officers(env: Env,
                                                                       name: str) -> None:
    """An attacker who can write the bundle fixes every clear hash after changing a file:
    integrity passes, authenticity (k officers) does not."""
    out = make(env)
    path = out / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    if name != "manifest.mac":

        def fix(doc: dict) -> None:
            entry = doc["snapshot"] if name == SNAPSHOT_FILE else next(
                s for s in doc["shares"] if s["file"] == name)
            entry["sha256"] = sha256(bytes(data))

        rewrite_manifest(out, fix)
    else:
        path.write_bytes(b"%064x\n" % 12345)
        resum(out)
    b = bmod.inspect(out)  # integrity holds: the clear hashes were all fixed
    with pytest.raises(BackupError, match=r"does not open|MAC does not verify|tampered"):
        key, _ = bmod.unlock(b, env.officers[:2])
        bmod.open_contents(b, key)


def test_a_removed_share_is_detected(env: Env) -> None:
    out = make(env)
    gone = copy(out, env.tmp, "file-gone")
    (gone / "shares/k2.v1.i1.g0.blob").unlink()
    with pytest.raises(BackupError, match="missing"):
        bmod.inspect(gone)
    # Removed from the manifest and the sums as well: integrity cannot tell, officers can.
    cut = copy(out, env.tmp, "cut")
    (cut / "shares/k2.v1.i1.g0.blob").unlink()
    rewrite_manifest(cut, lambda d: d.update(shares=d["shares"][:1]))
    b = bmod.inspect(cut)
    assert len(b.manifest.shares) == 1
    with pytest.raises(BackupError, match="does not open"):
        bmod.unlock(b, env.officers[:2])


def test_an_extra_file_or_a_symlink_is_refused(env: Env) -> None:
    out = make(env)
    extra = copy(out, env.tmp, "extra")
    (extra / "notes.txt").write_text("hello")
    with pytest.raises(BackupError, match="unexpected entry"):
        bmod.inspect(extra)
    link = copy(out, env.tmp, "link")
    target = link / "shares/k1.v1.i1.g0.blob"
    target.rename(env.tmp / "elsewhere.blob")
    target.symlink_to(env.tmp / "elsewhere.blob")
    with pytest.raises(BackupError, match="unexpected entry"):
        bmod.inspect(link)


# ------------------------------------------------------------------ officers


def test_a_wrong_officer_key_is_refused(env: Env) -> None:
    b = bmod.inspect(make(env))
    stranger = officers.generate("mallory")
    with pytest.raises(BackupError, match="not one of this bundle's officers"):
        bmod.unlock(b, [env.officers[0], stranger])
    impostor = officers.generate("bob-o")  # right name, other keys
    with pytest.raises(BackupError, match="does not hold the keys"):
        bmod.unlock(b, [env.officers[0], impostor])
    with pytest.raises(BackupError, match="given twice"):
        bmod.unlock(b, [env.officers[0], env.officers[0]])


def test_fewer_than_k_officers_cannot_open_it(env: Env) -> None:
    b = bmod.inspect(make(env, k=3))
    with pytest.raises(BackupError, match="this bundle needs 3 of 3"):
        bmod.unlock(b, env.officers[:2])
    key, _ = bmod.unlock(b, env.officers)
    assert bmod.open_contents(b, key).summary() == {"verified": 2}


def test_pieces_of_another_bundle_do_not_combine(env: Env) -> None:
    one, two = make(env, env.tmp / "one"), make(env, env.tmp / "two")
    mixed = copy(one, env.tmp, "mixed")
    shutil.copy(two / PIECES_FILE, mixed / PIECES_FILE)
    resum(mixed)
    with pytest.raises(BackupError, match="another bundle"):
        bmod.inspect(mixed)
    b1, b2 = bmod.inspect(one), bmod.inspect(two)
    pieces = {"alice-o": bmod.open_piece(b1, env.officers[0]),
              "bob-o": bmod.open_piece(b2, env.officers[1])}  # fmt: skip
    with pytest.raises(BackupError, match=r"do not combine|MAC"):
        bmod.combine(b1, pieces)


def test_officer_sets_and_k_are_validated(env: Env) -> None:
    pubs = env.publics
    for bad_officers, k, message in [
        (pubs[:1], 1, "2..32 officers"),
        (pubs, 1, "k must be"),
        (pubs, 4, "k must be"),
        ([pubs[0], pubs[0]], 2, "distinct"),
    ]:
        with pytest.raises(BackupError, match=message):
            bmod.create_bundle(env.tmp / "x", slot=env.slot, cluster_id=CLUSTER, genesis=GENESIS,
                               node=NODE, index=INDEX, snapshot=None, officers=bad_officers,
                               k=k)  # fmt: skip
    assert not (env.tmp / "x").exists()


# ------------------------------------------------------------------ content checks


def test_a_share_that_does_not_match_its_verification_share_is_refused(env: Env) -> None:
    slot = MemorySlot(CLUSTER, rng=seeded(5))
    slot.store_share(ShareId("k1", 1, INDEX, 0), env.shares[("k1", 1)][1])  # node-2's share
    b = bmod.inspect(make(env, slot=slot))
    key, _ = bmod.unlock(b, env.officers[:2])
    with pytest.raises(BackupError, match="does not match the verification share"):
        bmod.open_contents(b, key)


def test_a_bundle_without_snapshot_checks_shares_only(env: Env) -> None:
    b = bmod.inspect(make(env, snapshot=False))
    assert b.manifest.snapshot is None
    key, _ = bmod.unlock(b, env.officers[1:])
    contents = bmod.open_contents(b, key)
    assert contents.snapshot is None
    assert contents.summary() == {"unchecked": 2}


def test_a_slot_of_another_cluster_or_index_is_refused(env: Env) -> None:
    with pytest.raises(BackupError, match="belongs to cluster"):
        make(env, slot=MemorySlot("other-cluster"))
    slot = MemorySlot(CLUSTER)
    slot.store_share(ShareId("k1", 1, 2, 0), env.shares[("k1", 1)][1])
    with pytest.raises(BackupError, match="another member index"):
        make(env, slot=slot)


# ------------------------------------------------------------------ restore (memory slot)


def _restore(env: Env, bundle: Path, slot, data_dir: Path, **kw):
    b = bmod.inspect(bundle)
    key, _ = bmod.unlock(b, env.officers[:2])
    return restore(b, key, slot=slot, data_dir=data_dir, cluster_id=kw.pop("cluster_id", CLUSTER),
                   genesis=kw.pop("genesis", GENESIS), node=kw.pop("node", NODE), **kw)


def test_restore_brings_back_shares_and_a_data_dir_that_starts_at_the_snapshot(env: Env) -> None:
    out = make(env)
    fresh = MemorySlot(CLUSTER)
    data_dir = env.tmp / "node-1-data"
    report = _restore(env, out, fresh, data_dir)
    assert len(report.imported) == 2 and report.skipped == []
    for (key_id, version), values in env.shares.items():
        assert bytes(fresh.load_share(ShareId(key_id, version, INDEX, 0))) == values[INDEX - 1]
    assert report.snapshot == {"index": 40, "term": 3}
    with FileStorage(data_dir) as st:  # what the node's Driver opens at start
        snap = st.snapshot()
        hs, conf = st.initial_state()
        assert (snap.meta.index, snap.meta.term, st.last_index()) == (40, 3, 40)
        assert (hs.term, hs.vote, hs.commit) == (3, 0, 40)
        assert conf.voters == frozenset({1, 2, 3})
        assert snap.data == env.snapshot.snapshot.data
    assert data_dir.stat().st_mode & 0o777 == 0o700
    # The memory slot's identity is not the member's registered key: the report says so.
    assert report.registered_key == public_key(NODE).hex()
    assert any("custody node repair node-1 --public-key" in n for n in report.notes)


def test_restore_refuses_a_data_dir_or_token_in_use_unless_forced(env: Env) -> None:
    out = make(env)
    data_dir = env.tmp / "data"
    data_dir.mkdir()
    (data_dir / "wal-0000.log").write_text("old")
    with pytest.raises(BackupError, match="already holds data"):
        _restore(env, out, MemorySlot(CLUSTER), data_dir)
    assert (data_dir / "wal-0000.log").exists()
    with pytest.raises(BackupError, match="already holds 2 share"):
        _restore(env, out, env.slot, env.tmp / "empty")
    assert not (env.tmp / "empty").exists()  # refused before anything was written
    report = _restore(env, out, env.slot, data_dir, force=True)
    assert report.moved_aside is not None
    assert (Path(report.moved_aside) / "wal-0000.log").read_text() == "old"
    assert len(report.imported) == 2


def test_restore_refuses_a_bundle_of_another_cluster_or_member(env: Env) -> None:
    out = make(env)
    with pytest.raises(BackupError, match="belongs to cluster"):
        _restore(env, out, MemorySlot("cluster-b"), env.tmp / "d", cluster_id="cluster-b")
    with pytest.raises(BackupError, match="belongs to cluster"):
        _restore(env, out, MemorySlot(CLUSTER), env.tmp / "d", genesis=bytes(64))
    with pytest.raises(BackupError, match="node-1's, not node-2's"):
        _restore(env, out, MemorySlot(CLUSTER), env.tmp / "d", node="node-2")
    with pytest.raises(BackupError, match="token belongs to cluster"):
        _restore(env, out, MemorySlot("cluster-b"), env.tmp / "d")


def test_restore_parts_and_a_bundle_without_snapshot(env: Env) -> None:
    out = make(env, snapshot=False)
    data_dir = env.tmp / "data"
    data_dir.mkdir()
    (data_dir / "keep").write_text("x")
    report = _restore(env, out, MemorySlot(CLUSTER), data_dir)  # no snapshot: dir untouched
    assert (data_dir / "keep").exists() and report.snapshot is None
    assert any("holds no snapshot" in n for n in report.notes)
    full = make(env, env.tmp / "full")
    slot = MemorySlot(CLUSTER)
    report = _restore(env, full, slot, env.tmp / "d2", shares=False)
    assert slot.list_shares() == [] and report.snapshot is not None
    report = _restore(env, full, slot, env.tmp / "d3", snapshot=False)
    assert len(slot.list_shares()) == 2 and not (env.tmp / "d3").exists()
