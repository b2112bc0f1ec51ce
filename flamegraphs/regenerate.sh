#!/usr/bin/env bash
# Regenerates the broker flamegraphs: a `quiver standalone` per flush mode (async, sync),
# loaded by `quiver bench` with the produce workload (32 senders, 1 KiB, single sends) and the
# consume workload (reading back a topic filled with 64-message batches); `perf` samples the
# broker process only. Installs inferno (and needs `perf`: apt-get install linux-perf).
# Usage: flamegraphs/regenerate.sh   (from anywhere; writes flamegraphs/*.svg)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "perf is needed: apt-get install linux-perf" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
cargo build --release -p quiver
QUIVER=target/release/quiver
WORK=$(mktemp -d ./data/flamegraphs.XXXX 2>/dev/null || { mkdir -p ./data && mktemp -d ./data/flamegraphs.XXXX; })
SECONDS_SAMPLED=6

for flush in async sync; do
  config="$WORK/$flush.toml"
  cat > "$config" <<TOML
[namesrv]
listen = "127.0.0.1:0"
[broker]
listen = "127.0.0.1:0"
vip_channel = false
broker_ip = "127.0.0.1"
[broker.store]
disk_max_used_ratio = 0.9
[broker.store.log]
flush = "$flush"
segment_bytes = 268435456
TOML
  "$QUIVER" standalone --config "$config" --data-dir "$WORK/data-$flush" > "$WORK/$flush.out" &
  broker=$!
  until grep -q '^ready$' "$WORK/$flush.out"; do sleep 0.1; done
  namesrv=$(sed -n 's/^namesrv listening on //p' "$WORK/$flush.out")

  # Produce: sample the middle of a run.
  "$QUIVER" bench produce --namesrv "$namesrv" --topic "fg-$flush" --duration-secs $((SECONDS_SAMPLED + 4)) &
  load=$!
  sleep 2
  perf record -F 499 -g --call-graph dwarf,16384 -p "$broker" -o "$WORK/produce-$flush.perf" -- sleep "$SECONDS_SAMPLED"
  wait "$load"
  perf script -i "$WORK/produce-$flush.perf" 2>/dev/null | inferno-collapse-perf \
    | inferno-flamegraph --title "quiver broker, produce, $flush flush" > "flamegraphs/broker-produce-$flush.svg"

  # Consume: fill a topic (unsampled), then sample reading it back.
  "$QUIVER" bench produce --namesrv "$namesrv" --topic "fg-read-$flush" --batch 64 --producers 8 --count 2000000 --duration-secs 60 >/dev/null
  "$QUIVER" bench consume --namesrv "$namesrv" --topic "fg-read-$flush" --no-fill &
  load=$!
  sleep 1
  perf record -F 499 -g --call-graph dwarf,16384 -p "$broker" -o "$WORK/consume-$flush.perf" -- sleep 3 || true
  wait "$load"
  perf script -i "$WORK/consume-$flush.perf" 2>/dev/null | inferno-collapse-perf \
    | inferno-flamegraph --title "quiver broker, consume, $flush flush" > "flamegraphs/broker-consume-$flush.svg"

  kill -TERM "$broker"
  wait "$broker" || true
done
rm -rf "$WORK"
ls -l flamegraphs/*.svg
