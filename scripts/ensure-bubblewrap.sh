#!/usr/bin/env bash
# bubblewrap is Karta's default sandbox: `karta serve` refuses to start without it (unless
# [sandbox] backend = "none"). Installs Debian's package when it is missing and we can.
set -euo pipefail
if command -v bwrap >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-bubblewrap: installing the bubblewrap package"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null; }
  exit 0
fi
echo "ensure-bubblewrap: bwrap is missing; install the bubblewrap package (as root: apt-get install bubblewrap)" >&2
exit 1
