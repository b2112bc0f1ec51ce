#!/usr/bin/env bash
# Flush modes against each other: the same produce workload (1 KiB bodies, 8 queues) against a
# `quiver standalone` in sync and in async flush mode, alternating, at 1, 16 and 256
# concurrent senders and with batches of 1 and 64. Prints msg/s and p99 of each and their
# ratio. Usage: bench/scripts/flush-modes.sh [seconds per run, default 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
cargo build --release -q -p quiver
QUIVER=target/release/quiver
printf "%-9s %-6s %12s %10s %12s %10s %8s\n" senders batch "sync msg/s" "sync p99" "async msg/s" "async p99" "sync/async"
for senders in 1 16 256; do
  for batch in 1 64; do
    declare -A rate p99
    for flush in sync async; do
      line=$("$QUIVER" bench produce --broker "$flush" --producers "$senders" --batch "$batch" \
        --duration-secs "$SECS" --json 2>/dev/null | tail -1)
      rate[$flush]=$(echo "$line" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["produce"]["msgs_per_s"]))')
      p99[$flush]=$(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["produce"]["latency_us"]["p99"])')
    done
    ratio=$(python3 -c "print(f'{${rate[sync]}/max(${rate[async]},1):.2f}')")
    printf "%-9s %-6s %12s %8.0fµs %12s %8.0fµs %8s\n" "$senders" "$batch" "${rate[sync]}" "${p99[sync]}" "${rate[async]}" "${p99[async]}" "$ratio"
  done
done
