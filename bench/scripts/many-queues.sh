#!/usr/bin/env bash
# Many topics and queues against one `quiver standalone` (release, async flush, defaults
# otherwise), as issue 21 asks: the time of a topic creation as topics accumulate; descriptors
# and memory with T topics of 8 queues, each queue holding messages; a start's time to ready
# with that many queues, under the default open-file limit and under 1024; and sends spread
# over every queue against sends to one topic of 8 queues, in the same run.
# Usage: bench/scripts/many-queues.sh [topics, default 5000] [created in the creation bench,
# default 50000]. Writes under ./target/many-queues.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOPICS=${1:-5000}
CREATE=${2:-50000}
DIR=$PWD/target/many-queues
cargo build --release -q -p quiver
QUIVER=$PWD/target/release/quiver
rm -rf "$DIR"; mkdir -p "$DIR"
NS=127.0.0.1:29876
cat > "$DIR/quiver.toml" <<EOF
[namesrv]
listen = "$NS"
[broker]
listen = "127.0.0.1:20911"
vip_channel = false
broker_ip = "127.0.0.1"
[broker.store]
disk_max_used_ratio = 0.99
EOF

PID=
READY=
start() { # [limit]: starts the broker, waits for ready; READY holds the seconds it took
  local t0 t1
  t0=$(date +%s.%N)
  if [ -n "${1:-}" ]; then
    prlimit --nofile="$1:$1" "$QUIVER" standalone --config "$DIR/quiver.toml" --data-dir "$DIR/data" \
      > "$DIR/out" 2>> "$DIR/broker.log" &
  else
    "$QUIVER" standalone --config "$DIR/quiver.toml" --data-dir "$DIR/data" > "$DIR/out" 2>> "$DIR/broker.log" &
  fi
  PID=$!
  until grep -q '^ready' "$DIR/out" 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || { echo "the broker died; see $DIR/broker.log"; exit 1; }
    sleep 0.02
  done
  t1=$(date +%s.%N)
  READY=$(python3 -c "print('%.2f' % ($t1 - $t0))")
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }
fds() { ls "/proc/$PID/fd" | wc -l; }
# Queues and messages the broker holds (GET_BROKER_RUNTIME_INFO).
held() {
  "$QUIVER" admin broker status --namesrv "$NS" --json | python3 -c '
import json, sys
status = json.load(sys.stdin)
table = status[0] if isinstance(status, list) else status
table = table.get("table", table)
print("%s queues, %s messages" % (table.get("queueCount"), table.get("storeMessagesWritten")))'
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }

start
echo "== topic creation time as topics accumulate ($CREATE, through the admin API)"
"$QUIVER" bench topics --namesrv "$NS" --count "$CREATE" --every $((CREATE / 10)) --prefix made
stop
rm -rf "$DIR/data"

start
BASE_FDS=$(fds); BASE_RSS=$(rss_kib)
echo "== $TOPICS topics of 8 queues, 10 messages of 1 KiB per queue"
"$QUIVER" bench produce --namesrv "$NS" --topic many --topics "$TOPICS" --count $((TOPICS * 80)) \
  --producers 32 --duration-secs 600 --json > "$DIR/fill.json"
sleep 2 # past the index checkpoint, so every index file was written once
FDS=$(fds); RSS=$(rss_kib)
QUEUES=$((TOPICS * 8))
ACKED=$(python3 -c "import json; print(json.load(open('$DIR/fill.json'))['produce']['messages'] + $TOPICS)")
echo "acknowledged: $ACKED messages ($TOPICS of them creating the topics); the broker holds $(held)"
echo "descriptors: $BASE_FDS empty, $FDS with $QUEUES queues"
python3 -c "print('RSS: %d KiB empty, %d KiB with %d queues: %.2f KiB a queue' % ($BASE_RSS, $RSS, $QUEUES, ($RSS - $BASE_RSS) / $QUEUES))"

echo "== sends over all $QUEUES queues against one topic of 8 queues (alternating, 3 rounds of 10 s)"
for round in 1 2 3; do
  for topics in "$TOPICS" 1; do
    name=$([ "$topics" = 1 ] && echo one || echo many)
    rate=$("$QUIVER" bench produce --namesrv "$NS" --topic "$name" --topics "$topics" --producers 32 \
      --duration-secs 10 --json | tail -1 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["produce"]["msgs_per_s"]))')
    echo "round $round: $topics topics: $rate msg/s"
  done
done
echo "descriptors after the runs: $(fds)"
stop

echo "== restart with $QUEUES non-empty queues"
start
echo "ready in $READY s (open-file limit $(ulimit -Hn)), $(fds) descriptors, RSS $(rss_kib) KiB; holds $(held)"
stop
start 1024
echo "ready in $READY s under an open-file limit of 1024, $(fds) descriptors; holds $(held), $(fds) descriptors after"
stop
