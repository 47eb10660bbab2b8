#!/usr/bin/env bash
# Regenerates the TypeScript code for proto/herald/v1 into DIR (default web/src/gen) with
# `buf generate` and web/node_modules' protoc-gen-es (run `make web-install` first).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-web/src/gen}"
if [ ! -x web/node_modules/.bin/protoc-gen-es ]; then
  echo "web/node_modules/.bin/protoc-gen-es is missing: run 'make web-install'." >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
buf generate --template buf.gen.web.yaml --path proto/herald/v1 --output "$tmp"
rm -rf "${out:?}/herald"
mkdir -p "$out"
cp -r "$tmp/gen/herald" "$out/"
