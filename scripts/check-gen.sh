#!/usr/bin/env bash
# Fails when gen/ (Python) or web/src/gen (TypeScript) is not what `make gen` would produce
# from proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/gen.sh "$tmp/py" >/dev/null
scripts/gen-web.sh "$tmp/web" >/dev/null
stale=0
for pair in "py/herald:gen/herald" "web/herald:web/src/gen/herald"; do
  fresh="$tmp/${pair%%:*}"
  committed="${pair#*:}"
  if ! diff -r -q "$fresh" "$committed"; then
    echo "$committed is stale: run 'make gen' and commit the result." >&2
    diff -r -u "$committed" "$fresh" | head -n 40 >&2 || true
    stale=1
  fi
done
if [ "$stale" = 1 ]; then
  exit 1
fi
echo "gen/ and web/src/gen are up to date."
