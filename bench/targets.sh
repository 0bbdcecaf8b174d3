#!/usr/bin/env bash
# Runs our server at the sizes of the issue's targets, 3 runs each, medians printed per scenario
# (the BENCHMARKS.md "targets" table).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin high-templar --bin ht-bench
bench=${CARGO_TARGET_DIR:-target}/release/ht-bench
runs=${RUNS:-3}

for scenario in \
    "connect --clients 19000" \
    "fanout --clients 10000 --triggers 100" \
    "rooms --clients 10000 --triggers 10" \
    "latency --clients 1000 --rate 10 --seconds 10" \
    "latency --clients 10000 --rate 5 --seconds 10" \
    "subscribe --rooms 10000"; do
    echo "=== $scenario"
    # shellcheck disable=SC2086 # the scenario string is split on purpose
    "$bench" $scenario --runs "$runs" --timeout 120
    echo
done
