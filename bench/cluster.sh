#!/usr/bin/env bash
# Benchmark: does a cluster scale? The same four 256 MiB dense mixed images
# (bench/gen_image.py, seeds 1-4, so no chunk of one dedups against another; in the page
# cache) backed up at once through `bora up` clusters of 1 or 3 workers and 1 or 3 storage
# nodes, every source's read rate capped (`--read-limit`, default 40 MiB/s) so that a
# 2-core machine can show how a network-bound cluster scales. Ranges of 32 MiB
# (`--range-bytes`): each image is 8 ranges, 32 in all. For each configuration: a fresh
# `bora up` in a fresh data dir, four `bora --cluster URL backup --image ... --json`
# started together, and the wall clock from the first started to the last committed.
# Every backup must succeed and account for every chunk, and the last run of each
# configuration restores one of the images and `cmp`s it. Printed side by side:
# throughput (4 x image bytes / seconds), the scaling factor against 1 worker x 1 storage
# node, and gRPC bytes per stored byte, with what explains them: the CPU the cluster's
# members used and the whole machine's (other processes count there), how long the idle
# workers took to lease the first range, and the mean/longest range (lease to done, from
# the workers' logs, which `bora up` runs at BORA_LOG=info unless BORA_LOG says otherwise).
#
# The read cap (worker/src/cluster/cache.rs, throttle.rs): `--read-limit` becomes each
# worker's `read-limit-bytes-per-s`; a worker opens each job's disk once and wraps it in
# its own token bucket (a quarter second of burst). So the cap is per worker and per
# source: two ranges of the same disk on one worker share one bucket; the same disk read
# by two workers gets two buckets.
#
# Expected ideal scaling: `bora up` leaves the workers at WorkerConfig's default
# `concurrency` of 2 ranges at once (worker/src/cluster/config.rs), and the coordinator
# leases the running jobs' ranges round robin, so a worker's two ranges are normally of
# two different images: at most 2 x the cap per worker, 80 MiB/s for 1 worker and 240 MiB/s
# for 3 at 40 MiB/s: 3x. In whole rounds of ranges (32 ranges: 16 rounds of 2 for one
# worker, 6 rounds of 6 for three, the last one a third full) the best is 16/6 = 2.67x.
# A range is 32 MiB / 40 MiB/s = 0.8 s of reading (0.55 s when its bucket starts full),
# and then a tail: the pipeline's batch (32 MiB, worker/src/pipeline.rs) is the whole
# range, so the range is compressed and put as one pack only after all of it was read,
# and the source slot idles meanwhile. Storage nodes add no read capacity: with 1 worker,
# 3 storage nodes should run at the 1 x 1 speed, a bit slower with replicas 2 (twice the
# bytes to send and write makes every tail longer). With 3 workers the tails are where a
# 2-core machine runs out: the six ranges of a round end their reads together and all
# compress, send, verify and fsync at once on the same 2 cores (sampled every 100 ms, the
# CPU alternates ~0.4 s at 95-100% with ~0.5 s nearly idle), so a range takes ~1.0 s
# instead of ~0.75 s, and the scaling is about 2.67 x (1-worker range s / 3-worker
# range s): ~2.0-2.3x at 40 MiB/s, ~2.4x at READ_LIMIT_MIB=20 (the same tails, longer
# reads). Idle workers poll for leases with a backoff of up to 1 s: "1st lease" is that
# wait, paid once per run.
#
# gRPC bytes per stored byte:
#   gRPC     TCP payload the workers sent to the storage nodes (tcp_info bytes_sent minus
#            retransmits, read with `ss -tinp` from the workers' sockets to the storage
#            nodes' ports after the backups, before anything else connects): every
#            Missing and Put request with its protobuf, gRPC and HTTP/2 framing. (The
#            reports' bytes_uploaded is not this: it is the chunk record bytes the storage
#            nodes wrote, summed over every copy (storage-node/src/placed.rs,
#            store/put.rs); its ratio is printed next to it.)
#   stored   unique bytes stored: `du -sb` of every storage node's packs dir, summed, and
#            divided by the replicas (every chunk is on exactly `replicas` nodes: the
#            cluster is fresh and no node fails). Packs hold the compressed chunk records
#            (and the coordinator's few snapshot metadata chunks); the index is left out.
#   So the ideal is gRPC/stored = replicas: each copy crosses the wire once.
# The coordinator repairs once a few seconds after it starts (cli/src/repair_loop.rs):
# the backups start after that repair, as on a cluster that has been up for a while. A
# later repair (a storage node that missed a health check) or a chunk reported as
# already stored is printed as a note under the table.
#
# usage: bench/cluster.sh
# Env: RUNS (default 1; the best of RUNS per configuration), READ_LIMIT_MIB (default 40),
# CONFIGS (default "1:1:1 3:1:1 1:3:1 1:3:2 3:3:1 3:3:2": WORKERS:STORAGE:REPLICAS each;
# scaling is against 1:1:1, or the first when 1:1:1 is not listed), BENCH_DIR (scratch
# dir, default a temp dir under /var/tmp). ~2 minutes on 2 cores with RUNS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1}
READ_LIMIT_MIB=${READ_LIMIT_MIB:-40}
read -r -a CONFIGS <<< "${CONFIGS:-1:1:1 3:1:1 1:3:1 1:3:2 3:3:1 3:3:2}"
SIZE_MIB=256
RANGE_BYTES=$((32 << 20))
READ_LIMIT=$((READ_LIMIT_MIB << 20))
VMS=(vm1 vm2 vm3 vm4)

bash deploy/install.sh
. scripts/env.sh
cargo build --release --locked -p bora-cli >&2

W=${BENCH_DIR:-$(mktemp -d /var/tmp/bora-bench.XXXXXX)}
mkdir -p "$W"
UP_PID=""
BACKUP_PIDS=()
DATA=""
stop_cluster() {
  [ -n "$UP_PID" ] || return 0
  kill -TERM "$UP_PID" 2>/dev/null || true
  local rc=0
  wait "$UP_PID" || rc=$?
  UP_PID=""
  return $rc
}
cleanup() {
  for p in "${BACKUP_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_cluster || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "generating 4 x ${SIZE_MIB} MiB dense mixed images..." >&2
mkdir -p "$W/img"
for i in 1 2 3 4; do python3 bench/gen_image.py "$W/img/vm$i.raw" "$SIZE_MIB" "$i" & done
wait
cat "$W"/img/*.raw > /dev/null
IMG_BYTES=$(stat -c %s "$W/img/vm1.raw")
TOTAL=$((4 * IMG_BYTES))

. bench/common.sh

# Dies with the member logs' last lines (the reason a backup failed is usually there),
# and the error again under them.
die() {
  echo "error: $*" >&2
  if [ -n "$DATA" ]; then
    for log in "$DATA"/*/log; do
      [ -f "$log" ] || continue
      echo "--- $log (last lines)" >&2
      tail -n 5 "$log" >&2
    done
    echo "error: $*" >&2
  fi
  exit 1
}

# start_cluster WORKERS STORAGE REPLICAS: `bora up` into the fresh dir $DATA; sets URL.
start_cluster() {
  : > "$RUN/up.out"
  BORA_LOG=${BORA_LOG:-info} "$BORA_BIN" up --data "$DATA" --listen 127.0.0.1:0 \
    --workers "$1" --storage-nodes "$2" --replicas "$3" --range-bytes "$RANGE_BYTES" \
    --read-limit "$READ_LIMIT" > "$RUN/up.out" 2> "$RUN/up.err" &
  UP_PID=$!
  URL=""
  for _ in $(seq 600); do
    URL=$(sed -n 's/^ready //p' "$RUN/up.out")
    [ -z "$URL" ] || break
    kill -0 "$UP_PID" 2>/dev/null || { cat "$RUN/up.err" >&2; UP_PID=""; die "bora up exited"; }
    sleep 0.1
  done
  [ -n "$URL" ] || die "bora up did not say ready within 60 s"
  # The coordinator repairs once a few seconds after it starts (cli/src/repair_loop.rs);
  # on an empty cluster that takes no time, but run during the backups it lists and copies
  # chunks whose second copy is still on its way. Wait for it: a cluster that has been up a
  # while. (Any later repair is a storage node that missed a check, and is reported.)
  for _ in $(seq 100); do
    ! grep -q '^repair after' "$DATA/coordinator-1/log" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "note: no startup repair in $DATA/coordinator-1/log after 10 s; going on" >&2
}

# CPU time (clock ticks, user + system) the members of the cluster have used so far.
member_ticks() {
  local p t=0
  for p in $(pgrep -P "$UP_PID" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

# run_once WORKERS STORAGE REPLICAS RESTORE_VM: one timed run in a fresh cluster; sets
# RESULT to the seconds and the figures of `cluster_report.py run`. Restores RESTORE_VM
# afterwards (unless empty) and compares it with its image.
run_once() {
  RUN=$W/run
  DATA=$RUN/data
  rm -rf "$RUN"
  mkdir -p "$RUN"
  start_cluster "$1" "$2" "$3"
  local t0 t1 i rc vm node sums failed=""
  BACKUP_PIDS=()
  head -n 1 /proc/stat > "$RUN/cpu0.txt"
  member_ticks > "$RUN/ticks0.txt"
  t0=$(now)
  for vm in "${VMS[@]}"; do
    "$BORA_BIN" --cluster "$URL" backup --image "$W/img/$vm.raw" --vm "$vm" --json \
      > "$RUN/$vm.json" 2> "$RUN/$vm.err" &
    BACKUP_PIDS+=($!)
  done
  for i in "${!VMS[@]}"; do
    rc=0
    wait "${BACKUP_PIDS[$i]}" || rc=$?
    if [ "$rc" != 0 ]; then
      failed+=" ${VMS[$i]}"
      echo "backup of ${VMS[$i]} failed (exit $rc): $(cat "$RUN/${VMS[$i]}.err")" >&2
    fi
  done
  t1=$(now)
  head -n 1 /proc/stat > "$RUN/cpu1.txt"
  member_ticks > "$RUN/ticks1.txt"
  echo "$t0 $t1" > "$RUN/times.txt"
  BACKUP_PIDS=()
  [ -z "$failed" ] || die "backups failed:$failed"
  # The workers' connections to the storage nodes, before anything else connects or the
  # cluster stops.
  "$BORA_BIN" --cluster "$URL" status --json > "$RUN/members.json"
  ss -tinpH state established > "$RUN/ss.txt"
  if [ -n "$4" ]; then
    "$BORA_BIN" --cluster "$URL" restore latest --vm "$4" --disk "$4" --to "$W/restored.raw" \
      --force --json > /dev/null 2> "$RUN/restore.err" \
      || die "restore of $4 failed: $(cat "$RUN/restore.err")"
    cmp "$W/img/$4.raw" "$W/restored.raw" || die "restored $4 differs from its image"
    rm -f "$W/restored.raw"
  fi
  stop_cluster || die "bora up did not stop cleanly: $(tail -n 3 "$RUN/up.err")"
  for node in "$DATA"/storage-*; do
    du -sb "$node/data/packs" || die "no packs dir in $node/data"
  done > "$RUN/packs.txt"
  sums=$(python3 bench/cluster_report.py run "$RUN" "$IMG_BYTES" "${VMS[@]}") || die "bad run"
  RESULT="$(echo "$t1 - $t0" | bc -l) $sums"
}

RESULTS=$W/results.tsv
: > "$RESULTS"
n=0
for c in "${CONFIGS[@]}"; do
  IFS=: read -r w s r <<< "$c"
  best=""
  for run in $(seq "$RUNS"); do
    restore_vm=""
    # The last run of every configuration restores one image (a different one each time)
    # and compares it: the figures are of backups that come back whole.
    [ "$run" != "$RUNS" ] || restore_vm=${VMS[$((n % 4))]}
    run_once "$w" "$s" "$r" "$restore_vm"
    read -r secs figures <<< "$RESULT"
    printf '%s worker(s) x %s storage node(s), replicas %s, run %s: %.2f s%s\n' \
      "$w" "$s" "$r" "$run" "$secs" "${restore_vm:+ (restored $restore_vm: identical)}" >&2
    if [ -z "$best" ] || [ "$(echo "$secs < ${best%% *}" | bc -l)" = 1 ]; then
      best="$secs $figures"
    fi
  done
  echo "$w $s $r $best" >> "$RESULTS"
  n=$((n + 1))
done

python3 bench/cluster_report.py table "$RESULTS" "$TOTAL" "$READ_LIMIT" "$RUNS"
