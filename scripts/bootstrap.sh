#!/usr/bin/env bash
# Installs everything `make test` and `make demo` need on a fresh Debian machine:
# SoftHSM2 (the PKCS#11 module the nodes use as their HSM slot), a Python >= 3.11
# with venv, the container tools of the deployment test, the drills' network, disk
# and clock tools, and a virtual environment holding the project and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

need_apt=()
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)  # make demo verifies signatures with it
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv python3-dev)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need_apt+=(python3-venv)
fi
# The compose deployment test (tests/deploy) runs real containers: podman and
# podman-compose, runc (crun refuses a hybrid cgroup layout) and debootstrap
# (the base image is built from the Debian mirror; no image registry is needed).
# Without root they are only reported: `make demo` does not need them.
need_deploy=()
for tool in podman podman-compose runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || need_deploy+=("$tool")
done
if [ "${#need_deploy[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        need_apt+=("${need_deploy[@]}")
    else
        echo "bootstrap: ${need_deploy[*]} missing: tests/deploy will fail (install them as root)" >&2
    fi
fi
# The drills (docs/chaos.md): as root each runs in a network namespace of its own
# (iproute2's `ip netns`) with its network faults as iptables rules there, and its disk
# faults on loop-mounted ext4 images (mount, e2fsprogs); clock jumps use libfaketime
# (no root needed). Without them only those drills are skipped.
need_drill=()
command -v ip >/dev/null 2>&1 || need_drill+=(iproute2)
command -v iptables >/dev/null 2>&1 || need_drill+=(iptables)
command -v mkfs.ext4 >/dev/null 2>&1 || need_drill+=(e2fsprogs)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || need_drill+=(libfaketime)
if [ "${#need_drill[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        need_apt+=("${need_drill[@]}")
    else
        echo "bootstrap: ${need_drill[*]} missing: the drills that need them are skipped" >&2
    fi
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing ${need_apt[*]}; run as root or install them with apt-get" >&2
        exit 1
    fi
    echo "bootstrap: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"bootstrap: Python >= 3.11 is required, found {sys.version.split()[0]}")
PY

stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log="$VENV/pip-install.log"
    echo "bootstrap: installing the project and its test extras into $VENV"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip \
           && "$VENV/bin/python" -m pip install -e '.[test]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: pip install failed (full log: $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
