#!/usr/bin/env bash
# CI for the clients and the demo page: the TypeScript client (node --test, its recovery
# included), the Python publisher (pytest), and the demo page in headless Chromium — all against
# the real server binary, the real RabbitMQ, and real sockets.
#
# Idempotent on a fresh Debian machine of this kind: installs chromium (apt) if missing, the
# npm packages (npm ci) and the Python ones (a venv in target/ci-venv). Exits non-zero on any
# failure, including "no tests ran".
set -euo pipefail
cd "$(dirname "$0")/.."
export CI=true
ROOT=$PWD
ARTIFACTS=$ROOT/target/artifacts
mkdir -p "$ARTIFACTS"

step() { echo "== $*"; }
fail() { echo "ci-clients: $*" >&2; exit 1; }

step "system packages"
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
command -v node >/dev/null || fail "node (>= 18) is required"
command -v rabbitmqctl >/dev/null || fail "rabbitmqctl is required (the AMQP reconnect test)"

step "services"
(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || fail "RabbitMQ is not reachable on 127.0.0.1:5672"

step "server binary"
cargo build --locked --bin high-templar

# Runs a node test file and fails unless at least one test ran and none failed.
node_tests() {
  local log="$ARTIFACTS/$1.tap"
  shift
  (cd clients/js && node --test --test-reporter=tap "$@") | tee "$log"
  grep -Eq '^# pass [1-9]' "$log" || fail "no passing tests in $log"
  grep -Eq '^# fail 0$' "$log" || fail "failures in $log"
}

step "TypeScript client: install and build"
(cd clients/js && npm ci --no-audit --no-fund)
# The demo page embeds the client's build; a stale committed copy would test old code.
cmp -s clients/js/dist/index.js src/demo/page/client.js ||
  fail "src/demo/page/client.js is stale: run 'npm run build' in clients/js and commit it"

step "TypeScript client: tests against the binary"
node_tests client-tests test/client.test.mjs

step "TypeScript client: recovery (positions, resume, gap notices) against the binary"
node_tests recovery-tests test/recovery.test.mjs

step "demo page in headless Chromium"
node_tests browser-tests test/browser.test.mjs
for shot in demo.png demo-recovery.png; do
  [ -s "$ARTIFACTS/$shot" ] || fail "no screenshot at $ARTIFACTS/$shot"
done

step "Python publisher: install"
VENV=$ROOT/target/ci-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e "clients/python[test]"

step "Python publisher: tests against the binary and RabbitMQ"
status=0
(cd clients/python && "$VENV/bin/pytest" -q -p no:cacheprovider) || status=$?
# pytest exits 5 when it collected no tests: that is a failure here too.
[ "$status" = 0 ] || fail "pytest exited with $status"

step "clients: all passed (screenshot: $ARTIFACTS/demo.png)"
