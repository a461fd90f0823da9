#!/bin/sh
# Installs the Debian packages chatd needs to build, run and test
# (`install-deps.sh bench` adds what `make bench` needs: gnuplot, and
# Node.js with npm for the reference peer unless a node is already there).
# Idempotent: installs only what is missing. Needs root (apt-get).
set -eu

PKGS="build-essential pkg-config libevent-dev libhiredis-dev libssl-dev node-llhttp
      libcmocka-dev libjansson-dev redis-server python3 python3-pytest python3-websockets openssl
      clang libclang-rt-14-dev"

if [ "${1:-}" = bench ]; then
    PKGS="$PKGS gnuplot-nox"
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || PKGS="$PKGS nodejs npm"
fi

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: must run as root to install:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
