#!/usr/bin/env bash
# Runs every check and test of husk on this machine, installing what it needs
# first: Debian packages, the guest kernel and the nested lab's kernel
# (cached in ~/.cache/husk), the workspace. Needs root and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage's wall time goes to stderr, for a run whose time limit matters.
stage() {
    local start=$SECONDS
    "$@"
    echo "stage '$*': $((SECONDS - start)) s" >&2
}

stage scripts/setup.sh
HUSK_KERNEL=$(kernel-config/build.sh)
export HUSK_KERNEL
echo "guest kernel: $HUSK_KERNEL" >&2
# The nested KVM lab's L1 kernel (Debian's package, unpacked and cached).
HUSK_LAB_KERNEL=$(scripts/lab-kernel.sh)
export HUSK_LAB_KERNEL
echo "lab kernel: $HUSK_LAB_KERNEL" >&2

stage cargo fmt --all -- --check
stage cargo clippy --workspace --all-targets -- -D warnings
stage cargo build --workspace --all-targets
# Fuzz targets (fuzz/): built with coverage instrumentation, 5 s smoke run each.
stage scripts/fuzz.sh 5

log=$(mktemp /tmp/husk-test.XXXXXX)
trap 'rm -f "$log"' EXIT
set +e
# Each test binary runs under a time limit (scripts/test-runner.sh).
runner="target.x86_64-unknown-linux-gnu.runner=['$PWD/scripts/test-runner.sh']"
cargo test --workspace --no-fail-fast --config "$runner" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
echo "whole run: $SECONDS s" >&2
exit "$status"
