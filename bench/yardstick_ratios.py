#!/usr/bin/env python3
"""Our/yardstick ratios from bench/yardstick.sh's results: medians per scenario and server,
as a Markdown table (the one BENCHMARKS.md quotes)."""
import json
import statistics
import sys
from collections import defaultdict

# scenario -> (figure, path in the result, better when higher)
FIGURES = {
    "burst": [("msgs/s", "msgs_per_s", True), ("server CPU µs/msg", "cpu_us_per_msg.server", False),
              ("p99 ms", "latency_ms.p99", False)],
    "rooms": [("msgs/s", "msgs_per_s", True), ("server CPU µs/msg", "cpu_us_per_msg.server", False),
              ("p99 ms", "latency_ms.p99", False)],
    "latency1k": [("p50 ms", "latency_ms.p50", False), ("p99 ms", "latency_ms.p99", False),
                  ("server CPU µs/msg", "cpu_us_per_msg.server", False)],
    "latency10k": [("p50 ms", "latency_ms.p50", False), ("p99 ms", "latency_ms.p99", False),
                   ("server CPU µs/msg", "cpu_us_per_msg.server", False)],
    "idle": [("KiB per socket", "kib_per_conn", False), ("conn/s", "conn_per_s", True)],
}


def get(result, path):
    for part in path.split("."):
        if not isinstance(result, dict) or part not in result:
            return None
        result = result[part]
    return result if isinstance(result, (int, float)) else None


def main(path):
    runs = defaultdict(list)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                scenario, _, server = r.get("label", "").partition(" ")
                runs[(scenario, server)].append(r)
    print("| scenario | figure | ours (median [min..max]) | yardstick | ours / yardstick | runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for scenario, figures in FIGURES.items():
        ours, limit = runs.get((scenario, "ours")), runs.get((scenario, "limit"))
        if not ours or not limit:
            continue
        for name, key, _higher in figures:
            a = [v for v in (get(r, key) for r in ours) if v is not None]
            b = [v for v in (get(r, key) for r in limit) if v is not None]
            if not a or not b:
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            ratio = f"{ma / mb:.2f}" if mb else "-"
            print(f"| {scenario} | {name} | {ma:g} [{min(a):g}..{max(a):g}] | "
                  f"{mb:g} [{min(b):g}..{max(b):g}] | {ratio} | {len(a)}/{len(b)} |")
        lost = sum(get(r, "lost") or 0 for r in ours)
        if lost:
            print(f"| {scenario} | LOST by ours | {lost} | | | |")


if __name__ == "__main__":
    main(sys.argv[1])
