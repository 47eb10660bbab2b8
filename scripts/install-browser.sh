#!/usr/bin/env bash
# Makes sure Debian's chromium is there for tests/test_browser.py (Playwright drives it; its own
# browser download does not work here). As root with apt-get: installs it. Otherwise: says why
# the browser tests will skip (under CI=true they fail instead, in the tests themselves).
set -euo pipefail
chromium="${HERALD_TEST_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium with apt-get, for tests/test_browser.py" >&2
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq && apt-get install -y -qq chromium >/dev/null; then
    exit 0
  fi
  echo "apt-get could not install chromium" >&2
else
  echo "$chromium is missing and installing it needs root with apt-get" >&2
fi
echo "tests/test_browser.py will skip (and fail under CI=true): apt-get install chromium" >&2
if [ "${CI:-}" = true ]; then
  exit 1
fi
