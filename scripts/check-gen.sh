#!/usr/bin/env bash
# Fails when gen/ is not what `make gen` would produce from proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/gen.sh "$tmp" >/dev/null
if ! diff -r -q "$tmp/herald" gen/herald; then
  echo "gen/ is stale: run 'make gen' and commit the result." >&2
  diff -r -u gen/herald "$tmp/herald" | head -n 40 >&2 || true
  exit 1
fi
echo "gen/ is up to date."
