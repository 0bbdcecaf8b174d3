#!/usr/bin/env bash
# Runs every scenario against our server and high-templar 3.1 in the same session, 3 runs each,
# and prints medians side by side with ratios (the BENCHMARKS.md comparison table).
#
# Needs: python3 -m venv /tmp/ht31 && /tmp/ht31/bin/pip install high-templar==3.1.0
#        RabbitMQ at 127.0.0.1:5672 (guest/guest): 3.1 takes triggers only over AMQP.
# Sizes are those 3.1 can finish in seconds (its own figures were taken at 1k-5k subscribers);
# bench/targets.sh runs ours at the target sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bin high-templar --bin ht-bench
bench=${CARGO_TARGET_DIR:-target}/release/ht-bench
runs=${RUNS:-3}

for scenario in \
    "connect --clients 2000" \
    "fanout --clients 1000 --triggers 100" \
    "rooms --clients 1000 --triggers 10" \
    "latency --clients 1000 --rate 2 --seconds 10" \
    "subscribe --rooms 2000"; do
    echo "=== $scenario"
    # shellcheck disable=SC2086 # the scenario string is split on purpose
    "$bench" $scenario --compare --runs "$runs" --timeout 120
    echo
done
