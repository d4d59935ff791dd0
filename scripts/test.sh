#!/usr/bin/env bash
# Runs every check and test of husk on this machine, installing what it needs
# first: Debian packages, the guest kernel (cached in ~/.cache/husk), the
# workspace. Needs root and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
HUSK_KERNEL=$(kernel-config/build.sh)
export HUSK_KERNEL
echo "guest kernel: $HUSK_KERNEL" >&2

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo test --workspace
