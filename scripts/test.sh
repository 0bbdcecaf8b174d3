#!/usr/bin/env bash
# The whole test suite, as the README gives it: ./scripts/test.sh
# Idempotent on a fresh machine: it installs and starts what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== brokers: RabbitMQ and Redis up (installed with apt-get when missing)"
APT_INSTALL=${APT_INSTALL:-1} ./scripts/ci-brokers.sh

# The storm test holds ~10k sockets in one process.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 14096 ]; then
    echo "test.sh: the hard open-files limit ($hard) is below the 14096 tests/storm.rs needs" >&2
    exit 1
fi

echo "== cargo test"
cargo test --locked --workspace

echo "== clients and demo page (TypeScript, Python, headless Chromium)"
./scripts/ci-clients.sh

echo "== benchmark smoke run (tiny sizes, no timing assertions)"
./scripts/ci-bench-smoke.sh
