"""Child process for the HSM tests: one node's slot in its own process.

Usage: python child_slot.py MODE CONFIG_JSON
  crash-store / crash-replace: die (os._exit) at the commit point of a store.
  node: report visible tokens, identity key, a signature and a stored blob.
  fsize-store: store one share normally, then one under a 16-byte file-size limit.
  replace SHARE_ID_JSON HEX / destroy SHARE_ID_JSON: change one share of a token
    that another process has open (observer: no sweep).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

from pkcs11 import Attribute

from node.hsm import aad
from node.hsm.errors import TokenNotFoundError
from node.hsm.pkcs11_slot import Pkcs11Slot, SlotConfig, load_module
from node.hsm.slot import ShareId

CRASH_ID = ShareId("crash-key", 1, 1, 0)
NODE_ID = ShareId("iso-key", 1, 1, 0)
GOOD_ID = ShareId("fsize-key", 1, 1, 0)
FSIZE_ID = ShareId("fsize-key", 1, 2, 0)


def _die(self: Pkcs11Slot, obj: object, label: str) -> None:
    os._exit(3)


def main() -> int:
    mode, cfg = sys.argv[1], SlotConfig(**json.loads(sys.argv[2]))
    if mode.startswith("crash-"):
        slot = Pkcs11Slot.open(cfg)
        if mode == "crash-replace":
            slot.store_share(CRASH_ID, b"\x01" * 32)
        Pkcs11Slot._relabel = _die  # type: ignore[method-assign]
        slot.store_share(CRASH_ID, b"\x02" * 32, replace=mode == "crash-replace")
        return 1  # not reached
    if mode == "node":
        lib = load_module(cfg.module_path, cfg.softhsm_conf)
        labels = sorted(s.get_token().label for s in lib.get_slots(token_present=True))
        foreign = json.loads(sys.argv[3])
        try:
            Pkcs11Slot.open(SlotConfig(**{**json.loads(sys.argv[2]), "token_label": foreign}))
            foreign_result = "opened"
        except TokenNotFoundError:
            foreign_result = "not-found"
        with Pkcs11Slot.open(cfg) as slot:
            slot.store_share(NODE_ID, bytes(range(32)), replace=True)
            blob = bytes(next(slot._find_data(aad.share_label(NODE_ID)))[Attribute.VALUE])
            out = {
                "labels": labels,
                "foreign": foreign_result,
                "identity": slot.identity_public_key().hex(),
                "signature": slot.sign(b"isolation").hex(),
                "blob": blob.hex(),
                "conf": os.environ.get("SOFTHSM2_CONF"),
            }
            slot.destroy_share(NODE_ID)
        print(json.dumps(out))
        return 0
    if mode == "fsize-store":
        with Pkcs11Slot.open(cfg) as slot:
            slot.store_share(GOOD_ID, b"\x01" * 32)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))
            try:
                slot.store_share(FSIZE_ID, b"\x02" * 32)
                stored = "ok"
            except Exception as exc:
                stored = type(exc).__name__
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            print(json.dumps({"store": stored, "visible_here": slot.has_share(FSIZE_ID)}))
        return 0
    if mode in ("replace", "destroy"):
        share_id = ShareId(*json.loads(sys.argv[3]))
        with Pkcs11Slot.open(cfg, sweep=False) as slot:
            if mode == "replace":
                slot.store_share(share_id, bytes.fromhex(sys.argv[4]), replace=True)
            else:
                slot.destroy_share(share_id)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
