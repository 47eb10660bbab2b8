#!/usr/bin/env bash
# Regenerates the Python code for proto/ into DIR/herald (default DIR: gen): messages and .pyi stubs
# with `buf generate`, grpc service stubs with grpc_tools.protoc (not a protoc built-in).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gen}"
rm -rf "${out:?}/herald"
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
buf generate --template buf.gen.yaml --output "$tmp"
mkdir -p "$out"
cp -r "$tmp/gen/herald" "$out/"
protos=$(cd proto && find herald -name '*.proto' | sort)
# shellcheck disable=SC2086
python -m grpc_tools.protoc -Iproto --grpc_python_out="$out" $protos
# Generated modules import each other as `herald.v1...`: make every folder a package.
find "$out/herald" -type d -exec touch {}/__init__.py \;
touch "$out/herald/py.typed"
