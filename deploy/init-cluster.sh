#!/usr/bin/env bash
# The compose init service: creates the cluster once, then gives each node only
# its own part (docs/deploy.md, "Volumes").
#
# `custody cluster init` runs in /cluster, a tmpfs that disappears with this
# container, so that the whole cluster (every token, every key) is never on one
# disk. From there, per node (mounted side by side on /cluster/node-<i>/ in the
# node's container, where node.toml's relative paths find each other):
#   /volumes/node-<i>/conf   node.toml, the bootstrap, the CA certificate, the
#                            node's TLS certificate and key
#   /volumes/node-<i>/hsm    its SoftHSM2 token, softhsm2.conf and user PIN (the
#                            conf names the token directory by the absolute path
#                            /cluster/node-<i>/hsm/tokens, the same in both places)
#   /volumes/node-<i>/data   its data_dir, empty
# and /admin, the operators' volume: cluster.json, the PKI (CA key, principals'
# keys), the client profiles, the tokens' SO PINs.
# cluster.json is written last: once it exists this script does nothing, so
# `compose up` after `compose down` (without -v) keeps the cluster.
set -euo pipefail

NODES="${CUSTODY_NODES:-3}"
ADMIN=/admin
VOLS=/volumes
WORK=/cluster
NODE_USER=custody
RAFT_BASE=8300  # node-<i>: Raft port 8300+i, API port 8400+i (cluster init's +100)

die() { echo "init-cluster: $*" >&2; exit 1; }

if [ -f "$ADMIN/cluster.json" ]; then
    echo "init-cluster: $ADMIN/cluster.json exists: the cluster is already initialised"
    exit 0
fi
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "CUSTODY_NODES must be a number of nodes, got '$NODES'"
for i in $(seq 1 "$NODES"); do
    for part in conf hsm data; do
        [ -d "$VOLS/node-$i/$part" ] || die "$VOLS/node-$i/$part is not mounted (see docker-compose.yml)"
    done
    # A node that ran has state bound to a genesis; a new cluster would not match it.
    [ -z "$(ls -A "$VOLS/node-$i/data")" ] \
        || die "node-$i has data but $ADMIN has no cluster.json; refusing to overwrite it (remove the volumes, e.g. compose down -v, to start over)"
done
[ -z "$(ls -A "$WORK")" ] || die "$WORK is not empty: it must be a fresh tmpfs"

args=(--dir "$WORK" --nodes "$NODES" --threshold "${CUSTODY_THRESHOLD:-2}"
      --hosts "$(seq -f 'node-%g' -s, 1 "$NODES")" --base-port "$RAFT_BASE"
      --cluster-id "${CUSTODY_CLUSTER_ID:-compose}"
      --approvers "${CUSTODY_APPROVERS:-alice,bob,carol}"
      --operators "${CUSTODY_OPERATORS:-ops}"
      --epoch-interval "${CUSTODY_EPOCH_INTERVAL:-0}")
# Optional roles: an empty list is no list.
[ -z "${CUSTODY_CLIENTS-app1}" ] || args+=(--clients "${CUSTODY_CLIENTS-app1}")
[ -z "${CUSTODY_AUDITORS-audit}" ] || args+=(--auditors "${CUSTODY_AUDITORS-audit}")
custody cluster init "${args[@]}"

for i in $(seq 1 "$NODES"); do
    n="node-$i" v="$VOLS/node-$i"
    # Leftovers of a run that failed part-way (the data volumes are empty, checked above).
    find "$v/conf" "$v/hsm" -mindepth 1 -delete
    cp -p "$WORK/bootstrap.bin" "$WORK/pki/ca/ca.crt" "$v/conf/"
    cp -p "$WORK/pki/nodes/$n/tls.crt" "$WORK/pki/nodes/$n/tls.key" "$v/conf/"
    # node.toml as cluster init wrote it, its paths moved to this layout; the
    # check below fails loudly if that layout ever changes.
    sed -e 's|^bootstrap = .*|bootstrap = "bootstrap.bin"|' \
        -e 's|^data_dir = .*|data_dir = "../data"|' \
        -e 's|^ca = .*|ca = "ca.crt"|' \
        -e 's|^cert = .*|cert = "tls.crt"|' \
        -e 's|^key = .*|key = "tls.key"|' \
        -e 's|^pin_file = "hsm/|pin_file = "../hsm/|' \
        -e 's|^softhsm_conf = "hsm/|softhsm_conf = "../hsm/|' \
        "$WORK/$n/node.toml" > "$v/conf/node.toml"
    # The token, its conf and the user PIN; the SO PIN (re-initialising the
    # token) is the operators' business and goes to /admin.
    cp -a "$WORK/$n/hsm/tokens" "$WORK/$n/hsm/softhsm2.conf" "$WORK/$n/hsm/user.pin" "$v/hsm/"
    chown -R "$NODE_USER:$NODE_USER" "$v/conf" "$v/hsm" "$v/data"
    chmod 0700 "$v/hsm" "$v/data"
    # What the node will load, checked here with the same loader.
    python -c 'import sys; from node.server.config import load_config; load_config(sys.argv[1], create_data_dir=False)' \
        "$v/conf/node.toml" || die "$n: the node.toml written for the node's volumes does not load (above)"
done

find "$ADMIN" -mindepth 1 -delete
install -d -m 0700 "$ADMIN"
cp -a "$WORK/bootstrap.bin" "$WORK/pki" "$WORK/profiles" "$ADMIN/"
for i in $(seq 1 "$NODES"); do
    install -d -m 0700 "$ADMIN/node-$i"
    cp "$VOLS/node-$i/conf/node.toml" "$ADMIN/node-$i/"  # for reference: what node-<i> runs
    cp -p "$WORK/node-$i/hsm/so.pin" "$ADMIN/node-$i/"
done
# Profiles for the container host: the API ports compose publishes on it (the
# node certificates also name 127.0.0.1 and localhost).
install -d -m 0755 "$ADMIN/profiles-host"
urls=$(for i in $(seq 1 "$NODES"); do
           port_var="CUSTODY_API_PORT_$i"
           printf '"https://%s:%s"\n' "${CUSTODY_PUBLISH_HOST:-127.0.0.1}" "${!port_var:-$((RAFT_BASE + 100 + i))}"
       done | paste -sd, | sed 's/,/, /g')
for p in "$ADMIN"/profiles/*.toml; do
    sed "s|^nodes = .*|nodes = [$urls]|" "$p" > "$ADMIN/profiles-host/$(basename "$p")"
done

for i in $(seq 1 "$NODES"); do
    touch "$VOLS/node-$i/conf/.ready"  # run-node.sh waits for it
done
cp -p "$WORK/cluster.json" "$ADMIN/cluster.json"  # last: the cluster is complete
echo "init-cluster: done; operators' files in the admin volume (profiles/, profiles-host/)"
