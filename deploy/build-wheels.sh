#!/usr/bin/env bash
# Fills deploy/wheels/ with wheels of the project (from this working tree) and of
# its dependencies, for the Dockerfile to install with `pip --no-index`: the
# image build itself then needs no network. Wheels match the image's Python
# (Debian bookworm's 3.11) when built with a 3.11 venv, as scripts/bootstrap.sh
# makes; the dependencies come from pip's cache or the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
OUT=deploy/wheels

[ -x "$VENV/bin/python" ] || { echo "build-wheels: no $VENV; run scripts/bootstrap.sh" >&2; exit 1; }
"$VENV/bin/python" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"build-wheels: the image runs Python 3.11; this venv has {sys.version.split()[0]}")
PY

# Build from a copy of the sources: an in-tree build would leave build/ and
# egg-info behind in the working tree.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r pyproject.toml README.md shares consensus node chaos "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$OUT.new"
log="$src/pip-wheel.log"
if ! "$VENV/bin/python" -m pip wheel --wheel-dir "$OUT.new" "$src" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "build-wheels: pip wheel failed (log above)" >&2
    exit 1
fi
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
echo "build-wheels: $(ls "$OUT" | wc -l) wheels in $OUT"
