#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672, guest/guest) and Redis (127.0.0.1:6379) are up for the
# trigger source tests (tests/amqp.rs, tests/redis.rs), starting them when they are not.
# Idempotent; exits non-zero when either cannot be reached. Installs them with apt-get when
# missing and APT_INSTALL=1 (a fresh Debian/Ubuntu CI machine).
set -euo pipefail

# How long RabbitMQ gets to boot (it takes several seconds on a small machine).
RABBITMQ_BOOT_TIMEOUT=120
# How long Redis gets to answer PING after starting.
REDIS_BOOT_TIMEOUT=20

log() { echo "ci-brokers: $*"; }

install_if_missing() {
  local missing=()
  command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if [ ${#missing[@]} -eq 0 ]; then return; fi
  if [ "${APT_INSTALL:-0}" != 1 ]; then
    log "missing: ${missing[*]} (set APT_INSTALL=1 to install them with apt-get)"
    exit 1
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_rabbitmq() {
  if rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
    log "RabbitMQ is up"
  else
    log "starting RabbitMQ"
    rabbitmq-server -detached
    if ! rabbitmqctl -q await_startup --timeout "$RABBITMQ_BOOT_TIMEOUT"; then
      log "RabbitMQ did not start"
      exit 1
    fi
  fi
  # The tests (and high-templar 3.1's defaults) use guest/guest on 127.0.0.1:5672.
  if ! port_open 5672; then
    log "RabbitMQ runs but nothing listens on 127.0.0.1:5672"
    exit 1
  fi
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    log "Redis is up"
    return
  fi
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq "$REDIS_BOOT_TIMEOUT"); do
    if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
      log "Redis is up"
      return
    fi
    sleep 1
  done
  log "Redis did not start (see /var/log/redis/ci.log)"
  exit 1
}

install_if_missing
ensure_rabbitmq
ensure_redis
