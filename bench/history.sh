#!/usr/bin/env bash
# What history costs the hot path: burst fan-out and rooms with history on (the default) and
# off (HT_HISTORY_TTL=0), alternating run by run in the same minutes, medians and the ratio.
#
#   bench/history.sh                 # 3 runs each of fanout 10k x 100 and rooms 10k x 10
#   RUNS=5 bench/history.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin high-templar --bin ht-bench
bench=${CARGO_TARGET_DIR:-target}/release/ht-bench
runs=${RUNS:-3}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for scenario in "fanout --clients 10000 --triggers 100" "rooms --clients 10000 --triggers 10"; do
    on=() off=()
    for run in $(seq "$runs"); do
        for mode in on off; do
            ttl=5m
            [ "$mode" = off ] && ttl=0
            # shellcheck disable=SC2086 # the scenario string is split on purpose
            out=$(HT_HISTORY_TTL=$ttl "$bench" $scenario --runs 1 --timeout 120 2>&1)
            line=$(grep -m1 'msgs/s [0-9]' <<<"$out")
            rate=$(sed -E 's/.*msgs\/s ([0-9]+).*/\1/' <<<"$line")
            lost=$(sed -E 's/.*lost ([0-9]+).*/\1/' <<<"$line")
            echo "$(date -u +%H:%M:%S) $scenario history $mode run $run: $rate msgs/s, lost $lost" >&2
            if [ "$mode" = on ]; then on+=("$rate"); else off+=("$rate"); fi
        done
    done
    m_on=$(printf '%s\n' "${on[@]}" | median)
    m_off=$(printf '%s\n' "${off[@]}" | median)
    echo "| $scenario | ${on[*]} | ${off[*]} | $m_on | $m_off | $(awk -v a="$m_on" -v b="$m_off" 'BEGIN {printf "%.2f", a / b}') |"
done
