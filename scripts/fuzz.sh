#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ with libFuzzer and coverage instrumentation
# (the flags cargo-fuzz uses without a sanitizer, so the stable toolchain
# works) and runs each for a few seconds, after replaying the inputs in
# fuzz/regressions/<target>/ that once made it crash.
#
#   scripts/fuzz.sh            build and run each target for 10 s
#   scripts/fuzz.sh 300        run each for 300 s
#   scripts/fuzz.sh 0          build only
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
target=x86_64-unknown-linux-gnu
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$target" --target-dir fuzz/target --bins
[ "$secs" -gt 0 ] || exit 0
# The targets' scratch files go in a directory removed at the end.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch
for t in block_queue rng_queue vsock_packet mmio_transport api_request agent_message; do
    mkdir -p "fuzz/corpus/$t" fuzz/artifacts
    # Inputs that once crashed a target run first, each once.
    if [ -d "fuzz/regressions/$t" ]; then
        "fuzz/target/$target/release/$t" fuzz/regressions/"$t"/* 2>&1 | tail -1
    fi
    echo "fuzzing $t for ${secs}s" >&2
    "fuzz/target/$target/release/$t" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix=fuzz/artifacts/ "fuzz/corpus/$t" 2>&1 | tail -3
done
