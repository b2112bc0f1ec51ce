#!/usr/bin/env bash
# Quiver against peers on this machine, in one run, alternating: the RocketMQ broker written in
# Rust (crates.io rocketmq-broker/rocketmq-namesrv 1.0.0, ASYNC_FLUSH and SYNC_FLUSH) and NATS
# JetStream with file storage (Debian's nats-server).
#
# Workload (issue 6's reference): COUNT messages of 1 KiB, 32 concurrent synchronous senders
# sharing one connection, 8 queues; then one consumer reads the whole topic back. Quiver and
# RocketMQ are driven by `quiver bench produce|consume --namesrv` (the same client and load for
# both), NATS by `nats-load` (bench/src/bin/nats-load.rs: 32 tasks each waiting for its publish
# acknowledgement, then a pull consumer with 4 pulls of 256 outstanding). A second pair measures
# windowed publishing: 1024 sends outstanding on one connection. Every broker starts on fresh
# data and free ports, and is stopped after its run. Prints the median of ROUNDS rounds of each
# configuration and Quiver's ratio to each peer in the same flush mode.
#
# Usage: bench/scripts/peers.sh [rounds, default 3] [messages per run, default 200000]
#        [seconds a produce run may take, default 30: a slower system sends fewer messages]
# Installs what is missing: the RocketMQ binaries with `cargo install` into bench/peers/rocketmq
# (gitignored; once, long), nats-server with apt-get. A peer that cannot be installed or started
# is reported and skipped.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
COUNT=${2:-200000}
MAX_SECS=${3:-30}
SENDERS=32
QUEUES=8
SIZE=1024
WINDOW=1024
ROOT=$PWD
PEERS=$ROOT/bench/peers
RUN=$PEERS/run
RMQ_ROOT=$PEERS/rocketmq
RESULTS=$RUN/results.tsv
mkdir -p "$RUN"
: >"$RESULTS"

say() { echo "peers.sh: $*" >&2; }

cargo build --release -q -p quiver -p quiver-bench --bins || { say "cannot build quiver"; exit 1; }
QUIVER=$ROOT/target/release/quiver
NATS_LOAD=$ROOT/target/release/nats-load

# --- installing the peers -------------------------------------------------------------------
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

HAVE_RMQ=1
if [ ! -x "$RMQ_ROOT/bin/rocketmq-broker-rust" ] || [ ! -x "$RMQ_ROOT/bin/rocketmq-namesrv-rust" ]; then
  say "installing rocketmq-namesrv and rocketmq-broker 1.0.0 into $RMQ_ROOT (once; this compiles for a long time)"
  if ! cargo install --locked rocketmq-namesrv@1.0.0 rocketmq-broker@1.0.0 --root "$RMQ_ROOT" >"$PEERS/rocketmq-install.log" 2>&1; then
    say "RocketMQ (Rust) could not be installed (see $PEERS/rocketmq-install.log); skipping it"
    HAVE_RMQ=0
  fi
fi

HAVE_NATS=1
nats_server() { command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true; }
NATS_SERVER=$(nats_server)
if [ -z "$NATS_SERVER" ]; then
  say "installing nats-server with apt-get"
  if ! { $SUDO apt-get install -y -q nats-server >"$PEERS/nats-install.log" 2>&1 ||
    { $SUDO apt-get update -q >>"$PEERS/nats-install.log" 2>&1 &&
      $SUDO apt-get install -y -q nats-server >>"$PEERS/nats-install.log" 2>&1; }; }; then
    say "nats-server could not be installed (see $PEERS/nats-install.log); skipping NATS"
    HAVE_NATS=0
  fi
  NATS_SERVER=$(nats_server)
  [ -n "$NATS_SERVER" ] || HAVE_NATS=0
fi

# --- where the brokers keep their data -------------------------------------------------------
# All three on one filesystem. RocketMQ-Rust refuses writes while its store's filesystem is more
# than 90% full as statvfs counts it (space reserved for root counted as used; the limit cannot be
# raised): on such a disk the stores go to a loop-mounted ext4 image of STORE_GIB (sparse, mounted
# with discard, the loop device doing direct I/O on its backing file), unmounted at the end.
STORE=$RUN/store
mountpoint -q "$STORE" && $SUDO umount "$STORE" # left by an interrupted run
mkdir -p "$STORE"
full=$(python3 -c 'import os,sys; s=os.statvfs(sys.argv[1]); print(int(100*(s.f_blocks-s.f_bavail)/s.f_blocks))' "$STORE")
if [ "$full" -gt 85 ]; then
  say "$STORE's filesystem is $full% full: the stores go to a loop-mounted ext4 image of ${STORE_GIB:=4} GiB"
  IMG=$PEERS/store.img
  rm -f "$IMG"
  truncate -s "${STORE_GIB}G" "$IMG" && mkfs.ext4 -q -F -m 0 "$IMG" &&
    LOOPDEV=$($SUDO losetup -f --show --direct-io=on "$IMG") &&
    $SUDO mount -o discard "$LOOPDEV" "$STORE" || { say "cannot mount $IMG"; exit 1; }
  trap 'kill $(jobs -p) 2>/dev/null; wait; $SUDO umount "$STORE"; $SUDO losetup -d "$LOOPDEV"; rm -f "$IMG"' EXIT
  FS_NOTE="a ${STORE_GIB} GiB ext4 image, loop-mounted (the data disk was $full% full)"
else
  FS_NOTE="$(df --output=source,fstype "$STORE" | tail -1)"
fi

# --- helpers ----------------------------------------------------------------------------------
# A free TCP port on 127.0.0.1 such that port-2 and port+1 are free too (RocketMQ's broker also
# listens on listenPort-2, and its HA service on the port we give it).
free_port() {
  python3 - <<'EOF'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    p = random.randint(20000, 60000)
    if all(free(q) for q in (p - 2, p, p + 1)):
        print(p); break
EOF
}

# Waits until a TCP port accepts connections (or 30 s); false if it never does.
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

stop() { # pid [signal]
  kill "-${2:-TERM}" "$1" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

# Appends one result line: config round produce-msg/s p99-µs consume-msg/s (or "-" when missing).
record() { # config round produce.json consume.json
  python3 - "$@" >>"$RESULTS" <<'EOF'
import json, sys
config, rnd, pfile, cfile = sys.argv[1:5]
def side(path, key):
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.startswith("{")]
        return json.loads(lines[-1])[key]
    except Exception:
        return None
p, c = side(pfile, "produce"), side(cfile, "consume")
fmt = lambda v: "-" if v is None else f"{v:.0f}"
print("\t".join([config, rnd,
    fmt(p and p["msgs_per_s"]), fmt(p and p["latency_us"]["p99"]),
    fmt(c and c["msgs_per_s"]), fmt(p and p["errors"]), fmt(p and p["messages"])]))
EOF
}

# Produce then consume one topic through a RocketMQ-protocol name server.
drive_rocketmq_protocol() { # config round namesrv producers window
  local config=$1 round=$2 ns=$3 producers=$4 window=$5 topic="peers-$config-$round"
  local out=$RUN/$config-$round
  "$QUIVER" bench produce --namesrv "$ns" --topic "$topic" --queues $QUEUES --size $SIZE \
    --producers "$producers" --window "$window" --count "$COUNT" --duration-secs "$MAX_SECS" --json \
    >"$out.produce.json" 2>"$out.produce.err" || say "$config round $round: produce failed ($out.produce.err)"
  "$QUIVER" bench consume --namesrv "$ns" --topic "$topic" --no-fill --json \
    >"$out.consume.json" 2>"$out.consume.err" || say "$config round $round: consume failed ($out.consume.err)"
  record "$config" "$round" "$out.produce.json" "$out.consume.json"
}

run_quiver() { # config round flush producers window
  local config=$1 round=$2 flush=$3 dir=$RUN/quiver data=$STORE/quiver
  rm -rf "$dir" "$data" && mkdir -p "$dir"
  # The broker `quiver bench produce --broker` starts: 2 shards, 256 MiB segments.
  cat >"$dir/bench.toml" <<EOF
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
EOF
  "$QUIVER" standalone --config "$dir/bench.toml" --data-dir "$data" >"$dir/out.log" 2>"$dir/err.log" &
  local pid=$!
  for _ in $(seq 300); do grep -qx ready "$dir/out.log" 2>/dev/null && break; sleep 0.1; done
  local ns
  ns=$(sed -n 's/^namesrv listening on //p' "$dir/out.log")
  if [ -z "$ns" ] || ! grep -qx ready "$dir/out.log"; then
    say "$config: quiver standalone did not start ($dir/err.log)"
    stop $pid
    return
  fi
  drive_rocketmq_protocol "$config" "$round" "$ns" "$4" "$5"
  stop $pid
  rm -rf "$data"
}

run_rocketmq() { # config round flushDiskType
  local config=$1 round=$2 flush=$3 home=$RUN/rocketmq store=$STORE/rocketmq
  rm -rf "$home" "$store" && mkdir -p "$home/conf"
  local nsport bport
  nsport=$(free_port)
  bport=$(free_port)
  cat >"$home/conf/namesrv.toml" <<EOF
rocketmqHome = "$home"
kvConfigPath = "$home/namesrv/kvConfig.json"
configStorePath = "$home/namesrv/namesrv.properties"
EOF
  cat >"$home/conf/broker.toml" <<EOF
[broker]
namesrvAddr = "127.0.0.1:$nsport"
brokerIp1 = "127.0.0.1"
listenPort = $bport
storePathRootDir = "$store"

[broker.brokerServerConfig]
bindAddress = "127.0.0.1"

[broker.brokerIdentity]
brokerName = "broker-a"
brokerClusterName = "DefaultCluster"
brokerId = 0

[store]
storeType = "LocalFile"
brokerRole = "ASYNC_MASTER"
storePathRootDir = "$store"
haListenAddress = "127.0.0.1"
haListenPort = $((bport + 1))
flushDiskType = "$flush"
commitLogMicroBatchEnabled = false
EOF
  export ROCKETMQ_HOME=$home ROCKETMQ_SECURITY_PROFILE=development-insecure-loopback
  "$RMQ_ROOT/bin/rocketmq-namesrv-rust" -c "$home/conf/namesrv.toml" --listenPort "$nsport" \
    --bindAddress 127.0.0.1 >"$home/namesrv.log" 2>&1 &
  local nspid=$!
  if ! wait_port "$nsport"; then
    say "$config: the RocketMQ name server did not start ($home/namesrv.log)"
    stop $nspid
    return
  fi
  "$RMQ_ROOT/bin/rocketmq-broker-rust" -c "$home/conf/broker.toml" -n "127.0.0.1:$nsport" \
    >"$home/broker.log" 2>&1 &
  local bpid=$!
  # Registered once the name server lists the broker.
  local up=0
  for _ in $(seq 120); do
    if "$QUIVER" admin cluster list --namesrv "127.0.0.1:$nsport" --json 2>/dev/null | grep -q "$bport"; then
      up=1
      break
    fi
    kill -0 $bpid 2>/dev/null || break
    sleep 0.5
  done
  if [ $up = 1 ]; then
    drive_rocketmq_protocol "$config" "$round" "127.0.0.1:$nsport" $SENDERS 1
  else
    say "$config: the RocketMQ broker did not register ($home/broker.log)"
  fi
  stop $bpid
  stop $nspid
  rm -rf "$store"
  unset ROCKETMQ_HOME ROCKETMQ_SECURITY_PROFILE
}

run_nats() { # config round tasks window
  local config=$1 round=$2 dir=$RUN/nats store=$STORE/nats port
  rm -rf "$dir" "$store" && mkdir -p "$dir"
  port=$(free_port)
  cat >"$dir/nats.conf" <<EOF
listen: 127.0.0.1:$port
jetstream {
  store_dir: "$store"
}
EOF
  "$NATS_SERVER" -c "$dir/nats.conf" >"$dir/server.log" 2>&1 &
  local pid=$!
  if ! wait_port "$port"; then
    say "$config: nats-server did not start ($dir/server.log)"
    stop $pid INT
    return
  fi
  local out=$RUN/$config-$round
  "$NATS_LOAD" --server "127.0.0.1:$port" --limit-secs "$MAX_SECS" --json produce --count "$COUNT" --size $SIZE \
    --tasks "$3" --window "$4" >"$out.produce.json" 2>"$out.produce.err" ||
    say "$config round $round: nats-load produce failed ($out.produce.err)"
  # 4 pulls of 256 outstanding: the fastest of the shapes tried here (1x256, 8x32, 1x1024, 4x256).
  "$NATS_LOAD" --server "127.0.0.1:$port" --json consume --batch 256 --pullers 4 \
    >"$out.consume.json" 2>"$out.consume.err" ||
    say "$config round $round: nats-load consume failed ($out.consume.err)"
  record "$config" "$round" "$out.produce.json" "$out.consume.json"
  stop $pid INT
  rm -rf "$store"
}

# --- the rounds -------------------------------------------------------------------------------
say "$ROUNDS rounds of $COUNT messages of $SIZE bytes, $SENDERS senders, $QUEUES queues; data on $FS_NOTE"
for round in $(seq "$ROUNDS"); do
  say "round $round"
  run_quiver quiver-async "$round" async $SENDERS 1
  [ $HAVE_RMQ = 1 ] && run_rocketmq rocketmq-async "$round" ASYNC_FLUSH
  run_quiver quiver-sync "$round" sync $SENDERS 1
  [ $HAVE_RMQ = 1 ] && run_rocketmq rocketmq-sync "$round" SYNC_FLUSH
  [ $HAVE_NATS = 1 ] && run_nats nats "$round" $SENDERS 1
  run_quiver quiver-async-w$WINDOW "$round" async 1 $WINDOW
  [ $HAVE_NATS = 1 ] && run_nats nats-w$WINDOW "$round" 1 $WINDOW
done

# --- the table --------------------------------------------------------------------------------
python3 - "$RESULTS" "$WINDOW" <<'EOF'
import statistics, sys
path, window = sys.argv[1], sys.argv[2]
runs = {}
for line in open(path):
    config, rnd, prod, p99, cons, errors, msgs = line.rstrip("\n").split("\t")
    runs.setdefault(config, []).append((prod, p99, cons, errors, msgs))
def median(values):
    vals = [float(v) for v in values if v != "-"]
    return statistics.median(vals) if vals else None
med = {c: (median(r[0] for r in rs), median(r[1] for r in rs), median(r[2] for r in rs),
           sum(int(r[3]) for r in rs if r[3] != "-"), len(rs), median(r[4] for r in rs))
       for c, rs in runs.items()}
# Which Quiver run each peer is compared with: the same flush mode and sending shape.
# NATS 2.9 has no per-message fsync: it writes to its files and syncs them every 2 minutes.
pairs = {"rocketmq-async": "quiver-async", "rocketmq-sync": "quiver-sync",
         "nats": "quiver-async", f"nats-w{window}": f"quiver-async-w{window}"}
describe = {
    "quiver-async": "Quiver, async flush, 32 senders",
    "rocketmq-async": "RocketMQ-Rust, ASYNC_FLUSH, 32 senders",
    "quiver-sync": "Quiver, sync flush, 32 senders",
    "rocketmq-sync": "RocketMQ-Rust, SYNC_FLUSH, 32 senders",
    "nats": "NATS JetStream file, 32 publishers",
    f"quiver-async-w{window}": f"Quiver, async flush, {window} in flight",
    f"nats-w{window}": f"NATS JetStream file, {window} acks in flight",
}
fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
ratio = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}"
print()
print(f"{'system / config':<42} {'runs':>4} {'msgs sent':>10} {'produce msg/s':>14} {'p99 ms':>8} {'consume msg/s':>14} "
      f"{'errors':>6}   {'Quiver/peer produce':>19} {'consume':>8}")
for config in describe:
    if config not in med:
        continue
    prod, p99, cons, errors, n, msgs = med[config]
    q = med.get(pairs.get(config, ""), (None,) * 6)
    rp = ratio(q[0], prod) if config in pairs else ""
    rc = ratio(q[2], cons) if config in pairs else ""
    print(f"{describe[config]:<42} {n:>4} {fmt(msgs):>10} {fmt(prod):>14} {fmt(p99 and p99 / 1000, 2):>8} "
          f"{fmt(cons):>14} {errors:>6}   {rp:>19} {rc:>8}")
print()
print("Medians over the rounds; ratios are Quiver's median over the peer's median in the same flush")
print("mode and sending shape (NATS's file store syncs every 2 minutes, so it is paired with async).")
EOF
