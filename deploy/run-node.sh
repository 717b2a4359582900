#!/usr/bin/env bash
# A compose node service: `run-node.sh node-<i>` waits for the init service's
# output in its volumes, then becomes the node process.
set -euo pipefail
name="${1:?usage: run-node.sh node-<i>}"
dir="/cluster/$name"  # conf/, hsm/ and data/: one volume each
wait_s="${CUSTODY_INIT_WAIT:-300}"

# podman-compose starts every service at once (it ignores depends_on conditions),
# so wait here for the marker the init service writes once this node's files are complete.
start=$SECONDS
until [ -f "$dir/conf/.ready" ]; do
    if (( SECONDS - start >= wait_s )); then
        echo "run-node: $name has no configuration after ${wait_s}s; see the init service's log" >&2
        exit 1
    fi
    sleep 0.2
done
export SOFTHSM2_CONF="$dir/hsm/softhsm2.conf"
exec custody node run --config "$dir/conf/node.toml"
