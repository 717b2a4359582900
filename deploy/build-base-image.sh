#!/usr/bin/env bash
# Builds the image the Dockerfile starts FROM, from the Debian mirror alone:
# `debootstrap --variant=minbase bookworm` with the packages a node needs,
# imported into the container engine. Why not `FROM debian:bookworm-slim`: the
# deployment must build where no image registry is reachable, only the Debian
# mirror (see docs/deploy.md).
#
#   deploy/build-base-image.sh            # podman (default)
#   CONTAINER_ENGINE=docker deploy/build-base-image.sh
#
# The root file system is cached as a tarball in $CUSTODY_DEPLOY_CACHE (default
# /var/cache/custody-deploy) under a hash of everything that shapes it, so a
# second run only imports it (seconds) and a changed package list builds anew.
# The image carries the same hash as a label: if the engine already has it,
# nothing is done. The mirror is the host's own apt source for Debian (or
# $CUSTODY_DEBIAN_MIRROR). Needs root (debootstrap), debootstrap and the engine.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE="${CONTAINER_ENGINE:-podman}"
TAG="${CUSTODY_BASE_IMAGE:-localhost/custody-base:bookworm}"  # the Dockerfile's FROM
CACHE="${CUSTODY_DEPLOY_CACHE:-/var/cache/custody-deploy}"
SUITE=bookworm
# What a node needs at run time: Python with venv (the project is installed
# from wheels into /opt/custody), SoftHSM2 (its HSM slot) and openssl/CA
# certificates for operators working inside the container.
PACKAGES=python3,python3-venv,softhsm2,ca-certificates,openssl
RECIPE_VERSION=1  # bump when the steps below change what the tarball holds

die() { echo "build-base-image: $*" >&2; exit 1; }

command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE is not installed (scripts/bootstrap.sh installs podman)"
key=$(printf '%s\n' "$RECIPE_VERSION" "$SUITE" minbase "$PACKAGES" "$(dpkg --print-architecture)" \
      | sha256sum | cut -c1-16)

# Already imported with this recipe? Then there is nothing to do.
if [ "$("$ENGINE" image inspect --format '{{ index .Config.Labels "custody.base" }}' "$TAG" 2>/dev/null)" = "$key" ]; then
    echo "build-base-image: $TAG is up to date ($key)"
    exit 0
fi

tarball="$CACHE/base-$SUITE-$key.tar"
if [ ! -s "$tarball" ]; then
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root (or put a cached $tarball in place)"
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (scripts/bootstrap.sh installs it)"
    mirror="${CUSTODY_DEBIAN_MIRROR:-}"
    if [ -z "$mirror" ]; then
        # The host's Debian source: deb822 (URIs: ... / Suites: ...) or one-line format.
        mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$SUITE" '
            /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s && u!="") {print u; exit}}
            /^$/ {u=""}')
    fi
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v s="$SUITE" '
            $1=="deb" { i=2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++;
                        if ($(i+1)==s) {print $i; exit} }')
    fi
    [ -n "$mirror" ] || die "no apt source for $SUITE on this host; set CUSTODY_DEBIAN_MIRROR"
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/.build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "build-base-image: debootstrap $SUITE ($PACKAGES) from $mirror; about 2-4 minutes"
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$mirror" \
            >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    fi
    # Nothing the image needs: downloaded packages and indexes.
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
    tar --numeric-owner -C "$work/root" -cf "$work/base.tar" .
    mv "$work/base.tar" "$tarball"  # complete or absent: a killed run leaves no half tarball
    echo "build-base-image: cached $tarball"
fi

"$ENGINE" import --change "LABEL custody.base=$key" --change 'CMD ["/bin/bash"]' \
    "$tarball" "$TAG" >/dev/null
echo "build-base-image: imported $TAG ($key)"
