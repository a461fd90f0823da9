#!/bin/sh
# Installs the Debian packages chatd needs, by what they are for:
#   install-deps.sh run      building and running a node (make run)
#   install-deps.sh cluster  run + redis-server (make cluster)
#   install-deps.sh test     cluster + the test tools: cmocka, pytest, clang
#                            and its sanitizer runtime, Chromium, haproxy,
#                            Node.js with npm (unless a node is there), then
#                            the npm packages the tests drive, each pinned by
#                            its package-lock.json: the browser test's (npm ci
#                            in test/browser) and wscat (test/tools) (make test)
#   install-deps.sh bench    test + gnuplot, nginx-light and libnginx-mod-nchan
#                            (the nginx + nchan peer) (make bench)
#   install-deps.sh --list SET   prints the packages of SET and exits
# Idempotent: installs only what is missing, and runs npm ci only when the
# lock file changed since the last time. Needs root (apt-get).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)

list=no
if [ "${1:-}" = --list ]; then
    list=yes
    shift
fi
set_name=${1:-test}

RUN_PKGS="build-essential pkg-config libevent-dev libhiredis-dev libssl-dev node-llhttp
          libjansson-dev zlib1g-dev"
CLUSTER_PKGS="redis-server"
TEST_PKGS="libcmocka-dev python3 python3-pytest python3-websockets openssl clang
           libclang-rt-14-dev chromium haproxy"

case "$set_name" in
run) PKGS="$RUN_PKGS" ;;
cluster) PKGS="$RUN_PKGS $CLUSTER_PKGS" ;;
test | bench)
    PKGS="$RUN_PKGS $CLUSTER_PKGS $TEST_PKGS"
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || PKGS="$PKGS nodejs npm"
    [ "$set_name" = bench ] && PKGS="$PKGS gnuplot-nox nginx-light libnginx-mod-nchan"
    ;;
*)
    echo "usage: install-deps.sh [--list] [run|cluster|test|bench]" >&2
    exit 2
    ;;
esac
if [ "$list" = yes ]; then
    echo $PKGS
    exit 0
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

case "$set_name" in run | cluster) exit 0 ;; esac

# The browser test's playwright-core, and wscat for the deployment test
# (test/integration/test_deploy.py). The copy of the lock file that npm ci
# last installed from is kept in node_modules: the same lock, nothing to do.
for dir in "$here/test/browser" "$here/test/tools"; do
    if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.chatd-installed-lock" 2>/dev/null
    then
        echo "install-deps: npm ci in ${dir#"$here"/}"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error \
            && cp package-lock.json node_modules/.chatd-installed-lock)
    fi
done
