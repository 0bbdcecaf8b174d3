#!/usr/bin/env bash
# The whole test suite, as the README gives it: ./scripts/test.sh
# Idempotent on a fresh machine: each step installs and starts what its tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --locked

echo "== clients and demo page (TypeScript, Python, headless Chromium)"
./scripts/ci-clients.sh

echo "== benchmark smoke run (tiny sizes, no timing assertions)"
./scripts/ci-bench-smoke.sh
