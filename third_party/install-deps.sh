#!/bin/sh
# Installs the Debian packages chatd needs to build, run and test, among
# them Chromium and Node.js with npm (unless a node is already there) for
# the browser test, then the browser test's npm packages (npm ci in
# test/browser, pinned by its package-lock.json).
# (`install-deps.sh bench` adds what `make bench` needs: gnuplot.)
# Idempotent: installs only what is missing, and runs npm ci only when the
# lock file changed since the last time. Needs root (apt-get).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)

PKGS="build-essential pkg-config libevent-dev libhiredis-dev libssl-dev node-llhttp
      libcmocka-dev libjansson-dev redis-server python3 python3-pytest python3-websockets openssl
      clang libclang-rt-14-dev chromium"
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || PKGS="$PKGS nodejs npm"

if [ "${1:-}" = bench ]; then
    PKGS="$PKGS gnuplot-nox"
fi

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install-deps: installing:$missing"
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: must run as root to install:$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

# The browser test's playwright-core. The copy of the lock file that npm ci
# last installed from is kept in node_modules: the same lock, nothing to do.
browser="$here/test/browser"
if ! cmp -s "$browser/package-lock.json" "$browser/node_modules/.chatd-installed-lock" 2>/dev/null
then
    echo "install-deps: npm ci in test/browser"
    (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error \
        && cp package-lock.json node_modules/.chatd-installed-lock)
fi
