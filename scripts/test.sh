#!/usr/bin/env bash
# Runs every test of the project: installs missing system packages, checks formatting and lints,
# then runs all unit, property, process-level and end-to-end tests (real MariaDB, FUSE, BPF).
# With CI=true nothing may be skipped: a test whose prerequisite is missing fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "test: cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test: not root: tests that need FUSE mounts, BPF or a root-run mariadbd will skip" >&2
fi

scripts/setup.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries and the MariaDB plugin the end-to-end tests run)" >&2
cargo build --workspace --locked
echo "== cargo test" >&2
cargo test --workspace --locked
