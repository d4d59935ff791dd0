#!/usr/bin/env bash
# Cargo's target runner for the test run (scripts/test.sh): runs one test
# binary under a time limit, so a test that hangs fails its binary instead
# of the whole run. The nested lab's binary boots L1 under TCG and runs test
# groups there, each bounded by the lab itself; it gets the longest limit.
set -euo pipefail
bin=$1
case "$(basename "$bin")" in
lab-*) limit=${HUSK_TEST_LIMIT_LAB:-2700} ;;
*) limit=${HUSK_TEST_LIMIT:-900} ;;
esac
# timeout signals the binary's whole process group (helpers it started
# included), then kills what is left 30 s later.
set +e
timeout --kill-after=30 "$limit" "$@"
status=$?
set -e
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "test binary $(basename "$bin") did not finish within ${limit} s" >&2
fi
exit "$status"
