#!/usr/bin/env bash
# Quiver against the physical limits of this machine, measured in the same run, alternating:
#   - the disk: fio, sequential O_DIRECT writes of 64 KiB, 8 in flight (io_uring), into a file
#     on the data directory's filesystem, first a new file then the same file pre-written (the
#     figure quoted, as in `quiver bench engine`);
#   - the network: loopback TCP, one connection, 1 MiB writes into a reader that discards
#     (bench/src/bin/loopback.rs);
#   - Quiver: `quiver bench produce` with batches of 64 from 256 senders, sync then async flush,
#     and `quiver bench consume` (a topic filled with batches, read back by one consumer).
# Prints the median of ROUNDS rounds of each, in MB/s (10^6 bytes; for Quiver, message bodies
# only) and as a fraction of fio and of loopback.
#
# Usage: bench/scripts/limits.sh [rounds, default 3] [seconds per produce run, default 8]
#        [messages per consume run, default 1000000] [fio MiB, default 2048]
# Installs fio with apt-get if it is missing.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECS=${2:-8}
CONSUME_COUNT=${3:-1000000}
FIO_MIB=${4:-2048}
DATA=$PWD/data/limits
RESULTS=$DATA/results.tsv
mkdir -p "$DATA"
: >"$RESULTS"

say() { echo "limits.sh: $*" >&2; }

cargo build --release -q -p quiver -p quiver-bench --bins || { say "cannot build quiver"; exit 1; }
QUIVER=target/release/quiver
LOOPBACK=target/release/loopback

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if ! command -v fio >/dev/null; then
  say "installing fio with apt-get"
  $SUDO apt-get install -y -q fio >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q fio >/dev/null 2>&1; } ||
    say "fio could not be installed: no disk baseline"
fi

# One fio pass; prints MB/s.
fio_pass() { # file
  fio --name=seqwrite --rw=write --bs=64k --iodepth=8 --ioengine=io_uring --direct=1 \
    --end_fsync=1 --size="${FIO_MIB}M" --filename="$1" --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6))'
}

# The MB/s of one side of a quiver bench JSON line.
mb_s() { # side
  python3 -c "import json,sys; l=[x for x in sys.stdin.read().splitlines() if x.startswith('{')]; print(round(json.loads(l[-1])['$1']['mb_per_s']))"
}

note() { # what round MB/s
  if [ -n "$3" ]; then
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"
    say "round $2: $1 $3 MB/s"
  else
    say "round $2: $1 failed"
  fi
}

say "$ROUNDS rounds; produce runs of $SECS s; consume of $CONSUME_COUNT messages; fio $FIO_MIB MiB in $DATA"
for round in $(seq "$ROUNDS"); do
  if command -v fio >/dev/null; then
    rm -f "$DATA/fio.dat"
    note fio-new-file "$round" "$(fio_pass "$DATA/fio.dat")"
    note fio "$round" "$(fio_pass "$DATA/fio.dat")"
    rm -f "$DATA/fio.dat"
  fi
  note loopback "$round" "$("$LOOPBACK" --secs 5 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["mb_per_s"]))')"
  for flush in sync async; do
    note "quiver-$flush" "$round" "$("$QUIVER" bench produce --broker $flush --dir "$DATA/broker" \
      --batch 64 --producers 256 --duration-secs "$SECS" --json 2>/dev/null | mb_s produce)"
  done
  note quiver-consume "$round" "$("$QUIVER" bench consume --broker async --dir "$DATA/broker" \
    --batch 64 --producers 8 --count "$CONSUME_COUNT" --duration-secs 600 --json 2>/dev/null | mb_s consume)"
done
rm -rf "$DATA/broker"

python3 - "$RESULTS" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    what, _, mb = line.split("\t")
    runs.setdefault(what, []).append(float(mb))
med = {k: statistics.median(v) for k, v in runs.items()}
fio, loop = med.get("fio"), med.get("loopback")
describe = {
    "fio-new-file": "fio O_DIRECT, new file",
    "fio": "fio O_DIRECT, pre-written file (the disk limit)",
    "loopback": "loopback TCP, 1 MiB writes (the network limit)",
    "quiver-sync": "Quiver produce, sync flush, 256 x batches of 64",
    "quiver-async": "Quiver produce, async flush, 256 x batches of 64",
    "quiver-consume": "Quiver consume, 1 consumer, 8 queues",
}
pct = lambda a, b: "-" if a is None or not b else f"{100 * a / b:.1f}%"
print()
print(f"{'what':<50} {'runs':>4} {'MB/s':>8} {'of fio':>8} {'of loopback':>12}")
for k, d in describe.items():
    if k not in med:
        continue
    base = not k.startswith("quiver")
    print(f"{d:<50} {len(runs[k]):>4} {med[k]:>8,.0f} {'' if base else pct(med[k], fio):>8} "
          f"{'' if base else pct(med[k], loop):>12}")
print()
print("Medians over the rounds. Quiver's MB/s count message bodies (1 KiB each), not headers.")
EOF
