#!/usr/bin/env bash
# Runs our server at the sizes of the issue's targets, 3 runs each, medians printed per scenario
# (the BENCHMARKS.md "targets" table), between two measurements of the machine's floors
# (examples/sendto_floor.rs): this VM's speed drifts by up to 2x within a day, so a figure
# means something next to the floor of the same minutes. FLOORS=0 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bin high-templar --bin ht-bench --example sendto_floor
bench=${CARGO_TARGET_DIR:-target}/release/ht-bench
floor=${CARGO_TARGET_DIR:-target}/release/examples/sendto_floor
runs=${RUNS:-3}

floors() {
    [ "${FLOORS:-1}" = 0 ] && return
    echo "=== machine floors, $1 ($(date -u +%T) UTC)"
    for args in "burst 1000 200" "burst 9000 50" "stream 9000 5" "latency 1000 100 2 100" \
        "latency 9000 50 2 200" "pingpong 20000"; do
        # shellcheck disable=SC2086 # split on purpose
        "$floor" $args | tail -1
    done
    echo "on one CPU (taskset -c 0): $(taskset -c 0 "$floor" pingpong 20000 | tail -1)"
    echo
}

machine() {
    # The figures depend on these: a VM whose idle vCPUs halt at once (cpuidle-haltpoll with
    # guest_halt_poll_ns=0) pays a wake-up from the host for every round trip between threads on
    # different vCPUs (BENCHMARKS.md, "Subscribe one at a time").
    echo "=== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    local idle=/sys/devices/system/cpu/cpuidle/current_driver halt=/sys/module/haltpoll/parameters/guest_halt_poll_ns
    echo "cpuidle driver: $(cat $idle 2>/dev/null || echo none), guest_halt_poll_ns: $(cat $halt 2>/dev/null || echo n/a), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
}

machine
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

# The same one-at-a-time subscribes with the server and the generator on one CPU: each round
# trip then switches threads on that CPU instead of waking a halted vCPU twice. This is the
# server's own cost per subscribe, without the machine's wake-up latency.
echo "=== subscribe --rooms 10000, server and generator pinned to CPU 0 (taskset -c 0)"
taskset -c 0 "$bench" subscribe --rooms 10000 --runs "$runs" --timeout 120
echo

floors after
