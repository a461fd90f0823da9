#!/bin/bash
# The whole test suite, as `make test` runs it:
#   1. unit tests (cmocka), normal build
#   2. unit tests and integration tests under ASan+UBSan
#   3. the ring stress test, workers racing to compress one message, and a
#      threaded broadcast run under TSan
#   4. integration tests (pytest) against the normal build, beside the ASan
#      run of step 2; the fault tests (-m faults, minutes of Redis faults
#      under traffic) and the slow ones (-m slow: recoveries, restarts,
#      timers) run once, under ASan, where a leak or a use-after-free on an
#      error path shows; the Redis Cluster and Sentinel runs once, plain
#   5. the chat page in headless Chromium (node's test runner, playwright-core):
#      against a scripted server, then against two nodes and Redis
# Every step runs even if an earlier one failed; the exit code is non-zero
# if any failed. Set TEST_QUICK=1 to skip the sanitizer steps.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
JOBS=${JOBS:-2}
LOGDIR=build/test-logs
mkdir -p "$LOGDIR"
failed=""
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=66"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=66"
export TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1"

step() { # name, command...
    name=$1; shift
    printf '\n=== %s\n' "$name"
    if "$@" 2>&1 | tee "$LOGDIR/$name.log"; then printf '=== %s: ok\n' "$name"
    else printf '=== %s: FAILED\n' "$name"; failed="$failed $name"; fi
}

# Adds up what cmocka and pytest reported in every step's log.
count() { # word: passed | failed | skipped
    cat "$LOGDIR"/*.log 2>/dev/null | awk -v w="$1" '
        w == "passed" && /^\[  PASSED  \] [0-9]+ test/ { n += $4 }
        w == "failed" && /^\[  FAILED  \] [0-9]+ test\(s\), listed/ { n += $4 }
        /^ℹ (pass|fail|cancelled|skipped) [0-9]+$/ {
            if (($2 == "pass" && w == "passed") || ($2 == "skipped" && w == "skipped") ||
                (($2 == "fail" || $2 == "cancelled") && w == "failed")) n += $3
        }
        /^[0-9]+ (passed|failed|skipped|errors?)[ ,]/ || /[ ,] [0-9]+ (passed|failed|skipped|errors?)[ ,]/ {
            for (i = 1; i < NF; i++) {
                k = $(i + 1); sub(/[,;]$/, "", k)
                if (k == w || (w == "failed" && (k == "error" || k == "errors"))) n += $i
            }
        }
        END { print n + 0 }'
}
rm -f "$LOGDIR"/*.log "$LOGDIR"/*.rc

units() { # build dir
    rc=0
    for t in "$1"/unit/test_*; do
        [ -x "$t" ] || continue
        "$t" || rc=1
    done
    return $rc
}

pytest_run() { # binary, extra args...
    bin=$1; shift
    CHATD_BIN="$PWD/$bin" $PY -m pytest -q -p no:cacheprovider test/integration "$@"
}

# The Redis Cluster and Sentinel runs (minutes of failovers, most of it
# waiting) go with the plain build, beside the ASan run: the paths they
# take are the ones test_shards and test_redis take under ASan.
FARM="test/integration/test_cluster.py test/integration/test_sentinel.py test/integration/test_review14.py"
farm_run() { # binary, extra args...
    bin=$1; shift
    CHATD_BIN="$PWD/$bin" $PY -m pytest -q -p no:cacheprovider $FARM "$@"
}
not_farm() { for f in $FARM; do printf -- '--ignore=%s ' "$f"; done; }

step build        make -s -j"$JOBS" chatd unit
step unit         units build
if [ "${TEST_QUICK:-0}" != 1 ]; then
    step asan-build   make -s -j"$JOBS" SAN=asan chatd unit
    step asan-unit    units build/asan
    step tsan-build   make -s -j"$JOBS" SAN=tsan chatd build/tsan/unit/test_ring build/tsan/unit/test_msg
    step tsan-ring    build/tsan/unit/test_ring
    step tsan-msg     build/tsan/unit/test_msg
    step tsan-chat    pytest_run build/tsan/chatd -m tsan
    # The plain integration run goes beside the ASan one: most of either
    # waits on sockets and timers, not on a core. Its output follows once
    # both are done.
    ( { pytest_run build/chatd -m "not faults and not slow and not farm and not heavy" $(not_farm)
        a=$?; farm_run build/chatd -m "not farm and not heavy"; b=$?; [ $a = 0 ] && [ $b = 0 ]; } \
          > "$LOGDIR/integration.log" 2>&1; echo $? > "$LOGDIR/integration.rc" ) &
    plain=$!
    step asan-chat    pytest_run build/asan/chatd -m "not farm and not heavy" $(not_farm)
    wait $plain
    printf '\n=== integration (beside asan-chat)\n'
    cat "$LOGDIR/integration.log"
    if [ "$(cat "$LOGDIR/integration.rc" 2>/dev/null)" = 0 ]; then printf '=== integration: ok\n'
    else printf '=== integration: FAILED\n'; failed="$failed integration"; fi
    # The bursts of thousands of connections alone: beside another run they
    # measure the machine, not the node.
    step asan-heavy   pytest_run build/asan/chatd -m heavy
    step heavy        pytest_run build/chatd -m heavy
    step fuzz         make -s fuzz FUZZ_SECONDS=4
else
    step integration  pytest_run build/chatd
fi
browser_run() { # test file
    CHATD_BIN="$PWD/build/chatd" node --test --test-reporter=spec "$1"
}
step browser-page browser_run test/browser/page.test.mjs
step browser      browser_run test/browser/web.test.mjs

echo
[ -n "$failed" ] && echo "FAILED steps:$failed"
# the closing line CI reads
echo "chatd: $(count passed) passed, $(( $(count failed) + $(echo $failed | wc -w) )) failed, $(count skipped) skipped"
[ -z "$failed" ]
