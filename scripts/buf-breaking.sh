#!/usr/bin/env bash
# buf breaking against the previous commit of the checkout, once there is one that has proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! git rev-parse --verify --quiet HEAD~1 >/dev/null; then
  echo "buf breaking: no previous commit to compare with; skipped."
  exit 0
fi
if ! git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  echo "buf breaking: the previous commit has no buf.yaml; skipped."
  exit 0
fi
buf breaking --against ".git#ref=HEAD~1"
echo "buf breaking: no breaking change against HEAD~1."
