#!/usr/bin/env bash
# CI smoke run of the benchmark: every ht-bench scenario and every floor of
# examples/sendto_floor.rs at tiny sizes (seconds), so the load generator never rots. No timing assertions: ht-bench itself exits non-zero when a run loses or
# duplicates a message, or a connection or subscribe fails, and so does this script.
#
#   scripts/ci-bench-smoke.sh            # debug build (what CI has compiled anyway)
#   HT_BENCH_PROFILE=release scripts/ci-bench-smoke.sh
#   HT_BENCH_COMPARE=1 ...               # also high-templar 3.1 (needs /tmp/ht31 and RabbitMQ)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${HT_BENCH_PROFILE:-debug}
target_dir=${CARGO_TARGET_DIR:-target}
build_flags=()
if [ "$profile" = release ]; then
    build_flags=(--release)
fi
cargo build "${build_flags[@]}" --workspace --bin high-templar --bin ht-bench --example sendto_floor
bench="$target_dir/$profile/ht-bench"
floor="$target_dir/$profile/examples/sendto_floor"

extra=(--timeout 30)
if [ "${HT_BENCH_COMPARE:-0}" = 1 ]; then
    extra+=(--compare)
fi

run() {
    echo "+ ht-bench $*"
    "$bench" "$@" "${extra[@]}"
}

run connect --clients 50
run fanout --clients 20 --triggers 5
run rooms --clients 20 --triggers 3
run latency --clients 10 --rate 20 --seconds 0.5
run subscribe --rooms 200

# The machine's floors (bench/targets.sh measures them beside the scenarios), tiny sizes too.
for args in "burst 20 3" "stream 20 1" "latency 20 3 2 10" "pingpong 100"; do
    echo "+ sendto_floor $args"
    # shellcheck disable=SC2086 # split on purpose
    "$floor" $args
done
echo "ht-bench smoke: every scenario and floor ran clean"
