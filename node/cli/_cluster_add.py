"""`custody cluster add-node --dir DIR`: make one more node for a local cluster.

It writes what a new member needs and nothing more: a certificate from the
cluster's CA (`pki/`), a SoftHSM2 token with a fresh identity key, a data
directory and a node.toml with `join = true` (it starts empty and waits for the
leader to add it to Raft); cluster.json lists it so that `cluster up|down|status`
manage it. The cluster learns about it only through the governance request it
prints (`custody node add ...`): until the quorum approves and the time lock is
over, the new node is nobody.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register_add_node(sub: argparse._SubParsersAction) -> None:
    add = sub.add_parser(
        "add-node",
        help="make one more node (certificate, token, node.toml) for this local cluster",
        description="Write node-<N+1>: a certificate signed by the cluster's CA, a SoftHSM2 "
        "token with a new identity key, a node.toml with `join = true`. Prints the "
        "`custody node add` request to submit; start it with `custody cluster up` once "
        "the request took effect.",
    )
    add.add_argument("--dir", required=True, type=Path, help="cluster directory")
    add.add_argument("--json", action="store_true", help="machine-readable output")
    add.set_defaults(func=cmd_add_node)


def cmd_add_node(args: argparse.Namespace) -> int:
    import datetime as dt
    import secrets

    from node.cli.cluster import (
        CLUSTER_FILE,
        CONFIG_FILE,
        _free_ports,
        _load_cluster,
        _mkdir,
        _write_file,
    )
    from node.hsm import softhsm
    from node.pki.manifest import layout, load_pki
    from node.pki.store import init_pki, make_request
    from node.server.config import PeerConfig, format_address, load_config, render_config

    cluster = _load_cluster(args.dir)
    root = cluster.root
    first = load_config(cluster.nodes[0].config)
    index = len(cluster.nodes) + 1
    name = f"node-{index}"
    pki = load_pki(root / "pki")
    m = pki.manifest
    request = make_request(
        index, node_hosts=[*(e.hosts for e in m.nodes), m.nodes[-1].hosts],
        principals=[(p.name, p.role) for p in m.principals], ca_days=m.ca_days,
        leaf_days=m.leaf_days,
    )  # fmt: skip
    init_pki(root / "pki", request, now=dt.datetime.now(dt.UTC))  # extends: one node cert
    raft_port, api_port = _free_ports(2)
    host = cluster.nodes[-1].raft[0]
    new = PeerConfig(name, index, (host, raft_port), (host, api_port))
    peers = [PeerConfig(n.name, n.index, n.raft, n.api) for n in cluster.nodes] + [new]
    node_dir = root / name
    _mkdir(node_dir / "hsm", 0o700)
    env = softhsm.create_env(node_dir / "hsm")
    user_pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
    softhsm.write_pin_file(node_dir / "hsm" / "user.pin", user_pin)
    softhsm.write_pin_file(node_dir / "hsm" / "so.pin", so_pin)
    public_key = softhsm.provision_token(env, name, cluster.cluster_id, user_pin=user_pin,
                                         so_pin=so_pin)  # fmt: skip
    del user_pin, so_pin
    _mkdir(node_dir / "data", 0o700)
    text = render_config(
        name=name, cluster_id=cluster.cluster_id, genesis=first.genesis,
        bootstrap="../bootstrap.bin", data_dir="data", tls_ca=f"../pki/{layout.CA_CERT}",
        tls_cert=f"../pki/{layout.node_cert(name)}", tls_key=f"../pki/{layout.node_key(name)}",
        token_label=name, pin_file="hsm/user.pin", softhsm_conf="hsm/softhsm2.conf",
        module=env.module_path, api_listen=new.api, raft_listen=new.raft, peers=peers,
        join=True, schedule={
            "epoch_interval_s": first.epoch_interval_s,
            "epoch_min_interval_s": first.epoch_min_interval_s,
            "dkg_timeout_s": first.dkg_timeout_s, "sign_timeout_s": first.sign_timeout_s,
            "audit_checkpoint_every": first.audit_checkpoint_every,
            "refresh_every_epochs": first.refresh_every_epochs,
        },
    )  # fmt: skip
    _write_file(node_dir / CONFIG_FILE, text.encode(), 0o644)
    load_config(node_dir / CONFIG_FILE)  # a self-check
    doc: dict[str, Any] = json.loads((root / CLUSTER_FILE).read_text())
    doc["nodes"].append({"name": name, "index": index, "raft": format_address(new.raft),
                         "api": format_address(new.api)})  # fmt: skip
    _write_file(root / CLUSTER_FILE, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)
    out = {"node": name, "identity_public_key": public_key.hex(),
           "raft": format_address(new.raft), "api": format_address(new.api)}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(f"{name} written in {node_dir}; identity key {public_key.hex()}\n"
              f"next: custody node add {name} --public-key {public_key.hex()} "
              f"--raft {out['raft']} --api {out['api']}\n"
              "then have the governance quorum approve it, wait for its time lock, and "
              f"start it: custody cluster up --dir {root}")  # fmt: skip
    return 0
