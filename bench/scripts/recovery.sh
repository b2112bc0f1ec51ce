#!/usr/bin/env bash
# What a store's start costs: fills a 2-shard store with self-verifying records over 64 queues
# (`quiver store probe`, async flush, stopped cleanly), then times `quiver store open` with a
# cold page cache in three states, three rounds, next to reading the bytes the logs hold
# sequentially (`dd`, 4 MiB reads, both shards at once, cold cache) as the baseline:
#   clean        after a clean stop: nothing to re-read
#   lost file    one queue's first offset-index file deleted: that queue rebuilt from the log
#   no checkpt   both index-checkpoint copies deleted: every index rebuilt from the log
# Usage: bench/scripts/recovery.sh [records, default 4000000] [dir, default a new one under
# ./target]. Needs root (it drops the page cache between runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
RECORDS=${1:-4000000}
DIR=${2:-$(mktemp -d -p target recovery.XXXXXX)}
cargo build --release -q -p quiver
QUIVER=$PWD/target/release/quiver
STORE=$DIR/store
rm -rf "$STORE"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["open_secs"])'; }

echo "filling $STORE with $RECORDS records over 64 queues..."
# This disk is shared: retention must not delete what is being measured.
"$QUIVER" store probe --dir "$STORE" --queues 64 --shards 2 --appenders 64 --flush async \
  --max-body 2000 --count "$RECORDS" --disk-max-used-ratio 0.99 > /dev/null
open() {
  cold
  "$QUIVER" store open --dir "$STORE" --shards 2 --disk-max-used-ratio 0.99 --json | tail -1
}
CLEAN_JSON=$(open)
# Bytes each shard's log holds (segments are preallocated: only these are read).
mapfile -t HELD < <(echo "$CLEAN_JSON" | python3 -c 'import json,sys
for s in json.load(sys.stdin)["shards"]: print(s["log_end"] - s["log_start"])')
INDEX_BYTES=$(du -sb "$STORE"/shard-*/consumequeue | awk '{s+=$1} END {printf "%d", s}')
echo "log: $(( (HELD[0] + HELD[1]) >> 20 )) MiB in 2 shards, offset indexes: $((INDEX_BYTES >> 20)) MiB"

# Reads the first $2 bytes of the segments in $1, in order, as a scan would (4 MiB reads).
read_log() {
  local left=$2 seg size take
  for seg in "$1"/0*; do
    (( left > 0 )) || break
    size=$(stat -c %s "$seg")
    take=$(( left < size ? left : size ))
    dd if="$seg" of=/dev/null bs=4M count="$take" iflag=count_bytes status=none
    left=$(( left - take ))
  done
}
median() { python3 -c 'import statistics,sys; print("%.2f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
READS=(); CLEANS=(); LOSTS=(); ALLS=()
for round in 1 2 3; do
  cold
  start=$(date +%s.%N)
  for i in 0 1; do
    read_log "$STORE/shard-00$i/commitlog" "${HELD[$i]}" &
  done
  wait
  end=$(date +%s.%N)
  READS+=("$(python3 -c "print('%.2f' % ($end - $start))")")
  CLEANS+=("$(open | secs)")
  # The first offset-index file of one queue of shard 0.
  QUEUE_DIR=$(find "$STORE"/shard-000/consumequeue -mindepth 2 -maxdepth 2 -type d | sort | head -1)
  rm "$(find "$QUEUE_DIR" -type f | sort | head -1)"
  LOST_JSON=$(open)
  LOSTS+=("$(echo "$LOST_JSON" | secs)")
  rm "$STORE"/shard-*/index-checkpoint.*
  ALL_JSON=$(open)
  ALLS+=("$(echo "$ALL_JSON" | secs)")
done
READ=$(median "${READS[@]}")
echo "baseline: reading what the logs hold, cold cache: ${READS[*]} s"
printf "%-42s %8s %10s   %s\n" "start (cold cache)" "median s" "÷ read" "runs"
ratio() { python3 -c "print('%.2f' % ($1 / $READ))"; }
row() { local m; m=$(median "${@:2}"); printf "%-42s %8s %10s   %s\n" "$1" "$m" "$(ratio "$m")" "${*:2}"; }
row "reading the logs (baseline)" "${READS[@]}"
row "clean stop" "${CLEANS[@]}"
row "one queue's first index file deleted" "${LOSTS[@]}"
row "index checkpoint deleted (all rebuilt)" "${ALLS[@]}"
echo "$LOST_JSON"
echo "$ALL_JSON"
