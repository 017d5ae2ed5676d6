#!/usr/bin/env bash
# System packages the test suite uses beyond Python: Debian's headless Chromium (the report test
# renders the HTML page in it). Idempotent; needs root and apt-get, otherwise it says what is missing
# and the tests that need it skip with that reason.
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: not root or no apt-get; missing ${need[*]} (tests that need them will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/kollm-system-deps.log 2>&1; then
  apt-get update -q >>/tmp/kollm-system-deps.log 2>&1
  apt-get install -y -q --no-install-recommends "${need[@]}" >>/tmp/kollm-system-deps.log 2>&1 \
    || echo "system-deps: could not install ${need[*]} (see /tmp/kollm-system-deps.log); tests that need them will skip" >&2
fi
exit 0
