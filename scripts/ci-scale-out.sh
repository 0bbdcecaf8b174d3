#!/usr/bin/env bash
# The scale-out test (issue 13, docs/scale-out.md): three real nodes reading one RabbitMQ stream,
# behind a real nginx, and the TypeScript client's own reconnect and resume in Node
# (clients/js/test/scale_out.test.mjs): a SIGKILLed node costs its client no trigger, and the
# restarted node recovers a position given out before its restart.
#
# Idempotent on a fresh Debian machine of this kind: installs nginx (apt) if missing, the npm
# packages if clients/js has none. Needs RabbitMQ on 127.0.0.1:5672 (scripts/ci-brokers.sh) and
# rabbitmqctl. Exits non-zero on any failure, including "no tests ran". ~10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI=true
ROOT=$PWD
ARTIFACTS=$ROOT/target/artifacts
mkdir -p "$ARTIFACTS"

step() { echo "== $*"; }
fail() { echo "ci-scale-out: $*" >&2; exit 1; }

step "system packages"
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx
fi
command -v node >/dev/null || fail "node (>= 18) is required"
command -v rabbitmqctl >/dev/null || fail "rabbitmqctl is required"
(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || fail "RabbitMQ is not reachable on 127.0.0.1:5672"

step "server binary and client"
cargo build --locked --bin high-templar
[ -d clients/js/node_modules ] || (cd clients/js && npm ci --no-audit --no-fund)
client=${HT_CLIENT_JS:-$ROOT/clients/js/dist/index.js}
[ -f "$client" ] || (cd clients/js && npx tsc -p tsconfig.json)
# The test drives the client's own resume (subscribe with {recover: true}); a build of the
# client from before that feature cannot pass it, and says so rather than failing obscurely.
grep -q 'since' "$client" || fail "$client has no resume with since (the client's recovery feature)"

step "three nodes behind nginx, one node SIGKILLed"
log="$ARTIFACTS/scale-out.tap"
(cd clients/js && HT_CLIENT_JS="$client" node --test --test-reporter=tap test/scale_out.test.mjs) | tee "$log"
grep -Eq '^# pass [1-9]' "$log" || fail "no passing tests in $log"
grep -Eq '^# fail 0$' "$log" || fail "failures in $log"
