#!/usr/bin/env bash
# Benchmark: what does losing the coordinators' leader in the middle of backups cost?
# Four 256 MiB dense mixed images (bench/gen_image.py, seeds 1-4) backed up at once
# through `bora up` clusters of 3 storage nodes (2 replicas) and 2 workers, every source's
# read rate capped (`--read-limit`, default 40 MiB/s, as bench/cluster.sh) so the backups
# take long enough to kill something in the middle, ranges of 32 MiB (32 in all).
# Side by side, each in a fresh cluster, in the same run on the same machine:
#   1 coordinator     the reference: no Raft peers (a cluster of one)
#   3 coordinators    the catalog and the jobs replicated to three members, no failure
#   3, leader killed  the same, with the leader killed by SIGKILL once 40 % of the
#                     no-failure run's time has passed
# For each: the wall clock from the first backup started to the last committed, the
# throughput, and for the killed run how long until another coordinator led (polled with
# `bora status` every 0.1 s), how many leases of the dead leader the workers dropped (their
# ranges read again: "lease of an earlier leader dropped" in the workers' logs), how many
# jobs the new leader took over ("job taken over" in its log), and the seconds the
# failure cost against the no-failure run. Every backup must succeed; after the killed
# run every image is restored and `cmp`ed with its source (the jobs were cut halfway).
#
# usage: bench/failover.sh
# Env: RUNS (default 1: the best of RUNS per row), READ_LIMIT_MIB (default 40), KILL_AT
# (default 0.4: the fraction of the no-failure time at which the leader is killed),
# BENCH_DIR (scratch dir, default a temp dir under /var/tmp). ~1 minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1}
READ_LIMIT_MIB=${READ_LIMIT_MIB:-40}
KILL_AT=${KILL_AT:-0.4}
SIZE_MIB=256
RANGE_BYTES=$((32 << 20))
READ_LIMIT=$((READ_LIMIT_MIB << 20))
VMS=(vm1 vm2 vm3 vm4)

bash deploy/install.sh
. scripts/env.sh
cargo build --release --locked -p bora-cli >&2
BORA_BIN=$CARGO_TARGET_DIR/release/bora

W=${BENCH_DIR:-$(mktemp -d /var/tmp/bora-bench.XXXXXX)}
mkdir -p "$W"
UP_PID=""
BACKUP_PIDS=()
cleanup() {
  for p in "${BACKUP_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$UP_PID" ]; then kill -TERM "$UP_PID" 2>/dev/null || true; wait "$UP_PID" || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
. bench/common.sh

echo "generating 4 x ${SIZE_MIB} MiB dense mixed images..." >&2
mkdir -p "$W/img"
for i in 1 2 3 4; do python3 bench/gen_image.py "$W/img/vm$i.raw" "$SIZE_MIB" "$i" & done
wait
cat "$W"/img/*.raw > /dev/null
TOTAL=$((4 * $(stat -c %s "$W/img/vm1.raw")))

die() {
  echo "error: $*" >&2
  for log in "$DATA"/*/log; do
    [ -f "$log" ] || continue
    echo "--- $log (last lines)" >&2
    tail -n 5 "$log" >&2
  done
  exit 1
}

# leader: the id of the coordinator that answers as leader now ("" if none answers).
leader() {
  "$BORA_BIN" --cluster "$URL" status --json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader",""))' 2>/dev/null || true
}

# run_once COORDINATORS KILL_AFTER_S: one timed run in a fresh cluster (KILL_AFTER_S empty:
# no kill). Sets SECS, and with a kill LEADER_AFTER (s from the kill to a new leader).
run_once() {
  RUN=$W/run
  DATA=$RUN/data
  rm -rf "$RUN"
  mkdir -p "$RUN"
  : > "$RUN/up.out"
  BORA_LOG=${BORA_LOG:-info} "$BORA_BIN" up --data "$DATA" --listen 127.0.0.1:0 \
    --coordinators "$1" --workers 2 --storage-nodes 3 --replicas 2 \
    --range-bytes "$RANGE_BYTES" --read-limit "$READ_LIMIT" > "$RUN/up.out" 2> "$RUN/up.err" &
  UP_PID=$!
  URL=""
  for _ in $(seq 600); do
    URL=$(sed -n 's/^ready //p' "$RUN/up.out")
    [ -z "$URL" ] || break
    kill -0 "$UP_PID" 2>/dev/null || { cat "$RUN/up.err" >&2; UP_PID=""; die "bora up exited"; }
    sleep 0.1
  done
  [ -n "$URL" ] || die "bora up did not say ready within 60 s"
  sleep 4 # the coordinator's startup repair (see bench/cluster.sh)
  local t0 t1 i rc failed="" old pid
  BACKUP_PIDS=()
  t0=$(now)
  for vm in "${VMS[@]}"; do
    "$BORA_BIN" --cluster "$URL" backup --image "$W/img/$vm.raw" --vm "$vm" --json \
      > "$RUN/$vm.json" 2> "$RUN/$vm.err" &
    BACKUP_PIDS+=($!)
  done
  LEADER_AFTER=""
  if [ -n "$2" ]; then
    old=$(leader)
    sleep "$(echo "$2 - ($(now) - $t0)" | bc -l | sed 's/^-.*/0/')"
    pid=$("$BORA_BIN" --cluster "$URL" status --json | python3 -c '
import json,sys
st=json.load(sys.stdin)
print(next(m["pid"] for m in st["members"] if m["id"]==sys.argv[1]))' "$old")
    local tk; tk=$(now)
    kill -KILL "$pid"
    for _ in $(seq 300); do
      local l; l=$(leader)
      if [ -n "$l" ] && [ "$l" != "$old" ]; then LEADER_AFTER=$(echo "$(now) - $tk" | bc -l); break; fi
      sleep 0.1
    done
    [ -n "$LEADER_AFTER" ] || die "no new leader within 30 s of killing $old"
    KILLED=$old
  fi
  for i in "${!VMS[@]}"; do
    rc=0
    wait "${BACKUP_PIDS[$i]}" || rc=$?
    [ "$rc" = 0 ] || { failed+=" ${VMS[$i]}"; echo "backup of ${VMS[$i]} failed: $(cat "$RUN/${VMS[$i]}.err")" >&2; }
  done
  t1=$(now)
  BACKUP_PIDS=()
  [ -z "$failed" ] || die "backups failed:$failed"
  SECS=$(echo "$t1 - $t0" | bc -l)
  DROPPED=$(cat "$DATA"/worker-*/log 2>/dev/null | grep -c "lease of an earlier leader dropped" || true)
  TAKEN=$(cat "$DATA"/coordinator-*/log 2>/dev/null | grep -c "job taken over" || true)
  if [ -n "$2" ]; then
    for vm in "${VMS[@]}"; do
      "$BORA_BIN" --cluster "$URL" restore latest --vm "$vm" --disk "$vm" --to "$W/restored.raw" \
        > /dev/null 2> "$RUN/restore.err" || die "restore of $vm failed: $(cat "$RUN/restore.err")"
      cmp -s "$W/restored.raw" "$W/img/$vm.raw" || die "$vm does not restore bit-exact"
      rm -f "$W/restored.raw"
    done
  fi
  kill -TERM "$UP_PID" 2>/dev/null || true
  wait "$UP_PID" || true
  UP_PID=""
}

# best COORDINATORS KILL_AFTER_S: the best of RUNS (sets the figures of that run).
best_of() {
  local b="" bl="" bd="" bt=""
  for _ in $(seq "$RUNS"); do
    run_once "$1" "$2"
    if [ -z "$b" ] || [ "$(echo "$SECS < $b" | bc -l)" = 1 ]; then
      b=$SECS; bl=$LEADER_AFTER; bd=$DROPPED; bt=$TAKEN
    fi
  done
  SECS=$b; LEADER_AFTER=$bl; DROPPED=$bd; TAKEN=$bt
}

row() { # NAME SECS LEADER_AFTER DROPPED TAKEN VS
  printf '%-18s %7.2f %8.1f %12s %9s %10s %9s\n' "$1" "$2" \
    "$(echo "$TOTAL / 1048576 / $2" | bc -l)" "$3" "$4" "$5" "$6"
}

best_of 1 ""
ONE=$SECS
best_of 3 ""
THREE=$SECS
KILL_AFTER=$(echo "$THREE * $KILL_AT" | bc -l)
best_of 3 "$KILL_AFTER"

echo
echo "4 x ${SIZE_MIB} MiB images at once, 2 workers, 3 storage nodes (2 replicas), reads capped at ${READ_LIMIT_MIB} MiB/s per source and worker, 32 MiB ranges; best of $RUNS"
printf '%-18s %7s %8s %12s %9s %10s %9s\n' "coordinators" "s" "MiB/s" "new leader" "dropped" "taken over" "cost"
row "1" "$ONE" "-" "-" "-" "reference"
row "3" "$THREE" "-" "-" "-" "$(printf '%+.2f s' "$(echo "$THREE - $ONE" | bc -l)")"
row "3, leader killed" "$SECS" "$(printf '%.2f s' "$LEADER_AFTER")" "$DROPPED" "$TAKEN" \
  "$(printf '%+.2f s' "$(echo "$SECS - $THREE" | bc -l)")"
echo "($KILLED killed $(printf '%.1f' "$KILL_AFTER") s into the run; every image restored bit-exact afterwards)"
