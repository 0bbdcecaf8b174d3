#!/usr/bin/env bash
# The whole test suite, as the README gives it: ./scripts/test.sh
# Idempotent on a fresh machine: it installs and starts what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== module graph: no import cycle between the top-level modules of src/"
python3 scripts/module-graph.py >/dev/null

echo "== brokers: RabbitMQ and Redis up (installed with apt-get when missing)"
APT_INSTALL=${APT_INSTALL:-1} ./scripts/ci-brokers.sh

# The storm test holds ~10k sockets in one process; tests/open_files.rs starts the binary with a
# soft limit of 1,024 and counts on it raising that to the hard limit, for 3,000 clients.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 14096 ]; then
    echo "test.sh: the hard open-files limit ($hard) is below the 14096 tests/storm.rs needs" >&2
    exit 1
fi

# tests/deploy.rs runs the README's nginx example: nginx must be there before cargo test.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "== nginx (apt-get)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx
fi

# The broker sources are cargo features (README "Building"): the build without them must keep
# compiling, lint-clean, and its own tests (broker settings refused, naming the feature) pass.
echo "== the build without brokers (--no-default-features)"
cargo check --locked --no-default-features --all-targets
cargo clippy --locked --no-default-features --all-targets -- -D warnings
cargo test --locked --no-default-features --lib

echo "== cargo test"
cargo test --locked --workspace

# Ignored in a plain `cargo test` (README, "Tests"): 5,000 clients connecting at once.
echo "== reconnect storm (tests/storm.rs)"
cargo test --locked --test storm -- --ignored

echo "== Autobahn fuzzing client against the websocket layer (examples/autobahn_echo.rs)"
./scripts/ci-autobahn.sh

echo "== clients and demo page (TypeScript, Python, headless Chromium)"
./scripts/ci-clients.sh

echo "== scale-out: three nodes on one stream behind nginx, a node SIGKILLed (TypeScript client)"
./scripts/ci-scale-out.sh

echo "== benchmark smoke run (tiny sizes, no timing assertions)"
./scripts/ci-bench-smoke.sh
