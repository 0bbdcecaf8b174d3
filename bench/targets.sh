#!/usr/bin/env bash
# Runs our server at the sizes of the issue's targets, 3 runs each, medians printed per scenario
# (the BENCHMARKS.md "targets" table), between two measurements of the machine's floors
# (examples/sendto_floor.rs): this VM's speed drifts by up to 2x within a day, so a figure
# means something next to the floor of the same minutes. FLOORS=0 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin high-templar --bin ht-bench --example sendto_floor
bench=${CARGO_TARGET_DIR:-target}/release/ht-bench
floor=${CARGO_TARGET_DIR:-target}/release/examples/sendto_floor
runs=${RUNS:-3}

floors() {
    [ "${FLOORS:-1}" = 0 ] && return
    echo "=== machine floors, $1 ($(date -u +%T) UTC)"
    for args in "burst 1000 200" "burst 9000 50" "stream 9000 5" "pingpong 20000"; do
        # shellcheck disable=SC2086 # split on purpose
        "$floor" $args | tail -1
    done
    echo
}

floors before

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

floors after
