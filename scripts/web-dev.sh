#!/usr/bin/env bash
# `make web-dev`: the demo inbox page against a real stack, in one command. Starts `herald up`
# (127.0.0.1:50051, memory backends, dev auth), Envoy with deploy/envoy/envoy.yaml (gRPC-Web on
# :8080) and Vite's dev server (http://127.0.0.1:5173), and prints the page's URL with a dev
# token for WEB_DEV_USER (default alice) of WEB_DEV_TENANT (default acme) in its fragment.
# Ctrl-C stops all three. Send to the page from another shell:
#   . .venv/bin/activate && herald send --tenant acme --user alice --title Hi --body "It works"
set -euo pipefail
cd "$(dirname "$0")/.."
user="${WEB_DEV_USER:-alice}"
tenant="${WEB_DEV_TENANT:-acme}"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Minted first: it makes the dev signing key if this machine has none, before the server reads it.
token=$(herald token --user "$user" --tenant "$tenant" --ttl 86400)
herald up &
pids+=($!)
envoy -c deploy/envoy/envoy.yaml -l warning --disable-hot-restart &
pids+=($!)
echo
echo "  Inbox of $user@$tenant (the token stays in the fragment, never sent to a server):"
echo "  http://127.0.0.1:5173/#token=$token"
echo
(cd web && exec node_modules/.bin/vite --clearScreen false) &
pids+=($!)
wait -n "${pids[@]}"
