#!/usr/bin/env bash
# Side by side with the yardstick: our server and `limit-server` (../shared/loadgen, the
# smallest server this machine runs for the same work) under the same loadgen scenarios,
# alternating run by run in the same minutes, then medians [min..max] per scenario and server
# (`loadgen summarize`) and our/yardstick ratios. The BENCHMARKS.md "Against the yardstick"
# table comes from here.
#
#   bench/yardstick.sh                 # every scenario, RUNS=3
#   RUNS=5 bench/yardstick.sh burst    # some scenarios: burst rooms latency1k latency10k idle
#
# Needs: the loadgen checkout (LOADGEN, default ../shared/loadgen next to this repository);
# an open-files hard limit of 20,000 or more (the idle scenario holds 19,000 sockets).
# Our server runs with history on (its default), a trigger token, triggers on the internal
# address (as the README's deployment does: they are then taken in on a thread of their own),
# and the per-IP bound raised: the loadgen's sockets come from 4 loopback addresses. Its
# connection bound is set to 19,500: derived from this box's open-files limit (20,000) it keeps
# a reserve of ~2,200 descriptors (backend calls, sockets not yet upgraded) and would refuse
# the idle scenario's last ~1,200 sockets with 503.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
loadgen_dir=${LOADGEN:-$root/../shared/loadgen}
runs=${RUNS:-3}
scenarios=${*:-burst rooms latency1k latency10k idle}
out=${OUT:-$root/target/yardstick/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

cargo build --release --locked --bin high-templar
(cd "$loadgen_dir" && cargo build --release --locked)
ours_bin=${CARGO_TARGET_DIR:-$root/target}/release/high-templar
loadgen=$loadgen_dir/target/release/loadgen
ulimit -n "$(ulimit -Hn)"

ours_port=18700
ours_internal=18701
limit_port=18800
token=yardstick
server_pid=

stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# A fresh server for every run: idle memory is read from a fresh process, and no run inherits
# another's allocator state.
start_server() {
    case $1 in
    ours)
        HT_TRIGGER_TOKEN=$token "$ours_bin" \
            --api-url http://127.0.0.1:18781/api/ --listen "127.0.0.1:$ours_port" \
            --internal-listen "127.0.0.1:$ours_internal" \
            --max-connections-per-ip 1000000 --max-connections 19500 \
            --log-summary-interval 0s \
            >"$out/ours.log" 2>&1 &
        server_pid=$!
        wait_port "$ours_port"
        ;;
    limit)
        "$loadgen" limit-server --port "$limit_port" --token "$token" >"$out/limit.log" 2>&1 &
        server_pid=$!
        wait_port "$limit_port"
        ;;
    esac
}

# run SERVER SCENARIO: one loadgen run against SERVER, appended to $out/results.jsonl.
run() {
    local server=$1 scenario=$2 port url args
    port=$([[ $server == ours ]] && echo $ours_port || echo $limit_port)
    url=ws://127.0.0.1:$port/ws/
    # limit-server needs no backend; ours asks the loadgen's fake backend.
    local backend=()
    [[ $server == limit ]] && backend=(--no-backend)
    local trigger_port
    trigger_port=$([[ $server == ours ]] && echo $ours_internal || echo $limit_port)
    local trig=(--trigger-url "http://127.0.0.1:$trigger_port/trigger/" --trigger-token "$token")
    case $scenario in
    burst) args=(fanout -n 10000 -m 500 "${trig[@]}") ;;
    rooms) args=(rooms -n 10000 -m 10 --batch 100 "${trig[@]}") ;;
    latency1k) args=(fanout -n 1000 -m 100 --rate 10 "${trig[@]}") ;;
    latency10k) args=(fanout -n 10000 -m 50 --rate 5 "${trig[@]}") ;;
    idle) args=(connect -n 19000 -c 200 --hold-s 3) ;;
    *) echo "unknown scenario $scenario" >&2; return 1 ;;
    esac
    start_server "$server"
    "$loadgen" "${args[@]}" --url "$url" "${backend[@]}" --source-addrs 4 \
        --server-pid "$server_pid" --label "$scenario $server" \
        --json-out "$out/results.jsonl" >>"$out/loadgen.out" 2>>"$out/loadgen.err" \
        || echo "run failed: $scenario $server (see $out/loadgen.err)" >&2
    stop_server
}

for scenario in $scenarios; do
    for i in $(seq 1 "$runs"); do
        # Alternate which server goes first, so neither always gets the warmer minute.
        if ((i % 2)); then order=(ours limit); else order=(limit ours); fi
        for server in "${order[@]}"; do
            echo "== $scenario $server run $i" >&2
            run "$server" "$scenario"
        done
    done
done

"$loadgen" summarize "$out/results.jsonl" | tee "$out/summary.txt"
python3 "$root/bench/yardstick_ratios.py" "$out/results.jsonl" | tee -a "$out/summary.txt"
echo "results in $out" >&2
