#!/usr/bin/env bash
# Benchmark: incremental backup of a live 2 GiB disk after the guest rewrote 1% of it in
# scattered 64 KiB writes, side by side in one run with the reference it is judged against:
#   - restic's second backup of the same disk as a raw image file (restic from Debian).
# The "host" is qemu-storage-daemon serving the disk (qcow2) over QMP + NBD on unix sockets
# (as in the reference notes on QEMU's block layer); its writable NBD export `live` plays
# the guest. bora backs the VM up agentlessly (freeze, dirty bitmap, NBD read).
# Goal: bora incremental <= 0.1 x restic's second backup.
#
# usage: bench/incremental.sh [SIZE_MIB]
#   SIZE_MIB: disk size (default 2048); each round rewrites 1% of it (64 KiB writes at
#   distinct random 64 KiB-aligned offsets, random incompressible data, seeded).
# Env: BENCH_DIR (scratch dir, default a temp dir under /var/tmp; removed on exit),
# RUNS (default 3: rounds of write + bora incremental + restic backup, each on top of the
# previous snapshot; the best time of each tool is reported), SEED (default 1),
# CHUNK_SIZE (bytes; default: the repository default).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-2048}
RUNS=${RUNS:-3}
SEED=${SEED:-1}
WRITE=65536
NWRITES=$(( (SIZE_MIB * 1048576 / 100 + WRITE - 1) / WRITE ))   # 1% of the disk: 328 for 2 GiB

bash deploy/install.sh
. scripts/env.sh
cargo build --release --locked -p bora-cli >&2

W=${BENCH_DIR:-$(mktemp -d /var/tmp/bora-incr.XXXXXX)}
mkdir -p "$W"
QSD_PID=""
cleanup() {
  if [ -n "$QSD_PID" ]; then
    kill "$QSD_PID" 2>/dev/null || true
    wait "$QSD_PID" 2>/dev/null || true
  fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$W/restic-cache
BORA() { "$BORA_BIN" --repo "$W/bora" "$@"; }
LIVE="nbd+unix:///live?socket=$W/nbd.sock"
. bench/common.sh
elapsed() { echo "$2 - $1" | bc -l; }
# runs "$@" with stdout to $W/out, stderr to $W/err (shown on failure); sets T (seconds)
T=""
timed() {
  local t0 t1
  t0=$(now)
  "$@" > "$W/out" 2> "$W/err" || { echo "failed: $*" >&2; cat "$W/err" >&2; exit 1; }
  t1=$(now)
  T=$(elapsed "$t0" "$t1")
}
wait_socket() {
  for _ in $(seq 200); do
    [ -S "$1" ] && return 0
    kill -0 "$QSD_PID" 2>/dev/null || { echo "qemu-storage-daemon exited" >&2; cat "$W/qsd.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2
  cat "$W/qsd.log" >&2
  exit 1
}
bora_stats() {  # -> "bytes_read bytes_uploaded duration_s" of the report in $W/out, checking the mode
  python3 - "$W/out" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d = r["disks"][0]
if d["mode"] != sys.argv[2]:
    sys.exit(f"bora backup: expected mode {sys.argv[2]}, got {d['mode']} ({d.get('reason')})")
print(d["bytes_read"], d["bytes_uploaded"], r["duration_s"])
PY
}
restic_stats() {  # -> "total_bytes_processed data_added" of restic backup --json in $W/out
  python3 - "$W/out" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("message_type") == "summary":
        print(m["total_bytes_processed"], m["data_added"])
        break
else:
    sys.exit("restic backup: no summary in its --json output")
PY
}

# 1. the disk: dense mixed data, as qcow2
echo "generating a ${SIZE_MIB} MiB dense mixed disk..." >&2
python3 bench/gen_image.py "$W/gen.raw" "$SIZE_MIB"
qemu-img convert -f raw -O qcow2 "$W/gen.raw" "$W/disk0.qcow2"
rm -f "$W/gen.raw"
BYTES=$(( SIZE_MIB * 1048576 ))

# 2. the host: qemu-storage-daemon, QMP + NBD on unix sockets, writable export `live`
qemu-storage-daemon \
  --chardev socket,id=qmp0,path="$W/vm1.qmp",server=on,wait=off --monitor chardev=qmp0 \
  --blockdev driver=file,node-name=disk0-file,filename="$W/disk0.qcow2" \
  --blockdev driver=qcow2,node-name=disk0,file=disk0-file \
  --nbd-server addr.type=unix,addr.path="$W/nbd.sock",max-connections=16 \
  --export type=nbd,id=live,node-name=disk0,name=live,writable=on \
  > "$W/qsd.log" 2>&1 &
QSD_PID=$!
wait_socket "$W/vm1.qmp"
wait_socket "$W/nbd.sock"

# 3. bora: register the host, full backup (timed on its own, not part of the goal)
BORA init ${CHUNK_SIZE:+--chunk-size "$CHUNK_SIZE"} > /dev/null
BORA host add h1 --qmp "unix:$W/vm1.qmp" --nbd "unix:$W/nbd.sock" > /dev/null
echo "bora full backup..." >&2
timed BORA backup --vm vm1 --json
T_BORA_FULL=$T
s=$(bora_stats full); read -r BORA_FULL_READ BORA_FULL_UP _ <<< "$s"

# 4. restic: first backup of the disk as a raw image file
refresh_raw() { qemu-img convert -U -f raw -O raw "$LIVE" "$W/disk.raw"; }
refresh_raw
restic init --repo "$W/restic" > /dev/null
echo "restic first backup..." >&2
timed restic --repo "$W/restic" backup --json "$W/disk.raw"
T_RESTIC_FULL=$T
s=$(restic_stats); read -r RESTIC_FULL_READ RESTIC_FULL_UP <<< "$s"

# 5. the guest rewrites 1% of the disk: NWRITES x 64 KiB of random data at distinct
# random 64 KiB-aligned offsets, one qemu-io process over the live export
guest_writes() {
  local round=$1
  mkdir -p "$W/wr"
  python3 - "$W/wr" "$BYTES" "$WRITE" "$NWRITES" "$((SEED * 1000 + round))" > "$W/wr/cmds" <<'PY'
import random, sys
d, size, wsize, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
for i, slot in enumerate(rng.sample(range(size // wsize), n)):
    p = f"{d}/{i}"
    with open(p, "wb") as f:
        f.write(rng.randbytes(wsize))
    print(f"write -q -s {p} {slot * wsize} {wsize}")
PY
  qemu-io -t writeback -f raw "$LIVE" < "$W/wr/cmds" > "$W/wr/log" 2>&1 \
    || { cat "$W/wr/log" >&2; exit 1; }
  if grep -qi "error\|fail" "$W/wr/log"; then cat "$W/wr/log" >&2; exit 1; fi
}

DIRTIED=$(( NWRITES * WRITE ))
B_T=(); B_IN=(); B_READ=(); B_UP=(); R_T=(); R_READ=(); R_UP=()
for r in $(seq "$RUNS"); do
  echo "round $r/$RUNS: guest writes, bora incremental, restic second backup..." >&2
  guest_writes "$r"
  sync
  # 6. bora incremental (wall clock of the whole command)
  timed BORA backup --vm vm1 --json
  B_T+=("$T")
  s=$(bora_stats incremental); read -r rd up dur <<< "$s"
  B_READ+=("$rd"); B_UP+=("$up"); B_IN+=("$dur")
  # 7. restic second backup of the refreshed image file (refresh not timed)
  refresh_raw
  sync
  timed restic --repo "$W/restic" backup --json "$W/disk.raw"
  R_T+=("$T")
  s=$(restic_stats); read -r rd up <<< "$s"
  R_READ+=("$rd"); R_UP+=("$up")
done

# best of RUNS for each tool
bi=0; ri=0
for i in "${!B_T[@]}"; do
  [ "$(echo "${B_T[$i]} < ${B_T[$bi]}" | bc -l)" = 1 ] && bi=$i
  [ "$(echo "${R_T[$i]} < ${R_T[$ri]}" | bc -l)" = 1 ] && ri=$i
done

# correctness: the latest bora snapshot restores to the disk as restic last saw it
echo "verifying: bora restore latest == disk image..." >&2
BORA restore latest --vm vm1 --disk disk0 --to "$W/r.raw" > /dev/null 2> "$W/err" \
  || { cat "$W/err" >&2; exit 1; }
VERIFY="restored latest bora snapshot equals the disk image (qemu-img compare)"
qemu-img compare -q -f raw -F raw "$W/r.raw" "$W/disk.raw" \
  || VERIFY="MISMATCH: restored latest bora snapshot differs from the disk image"

# MiB read: bora's bytes_read (from the source), restic's total_bytes_processed;
# MiB added: bora's bytes_uploaded (after dedup + compression), restic's data_added
# (after dedup; restic 0.14's repository format does not compress).
mib() { echo "scale=1; $1 / 1048576" | bc -l; }
RV=$(restic version | cut -d' ' -f2)
echo
printf '%-40s %9s %11s %11s %11s\n' "${SIZE_MIB} MiB disk, 1% rewritten" "seconds" "MiB read" "MiB dirtied" "MiB added"
printf '%-40s %9.2f %11s %11s %11s\n' "restic $RV first backup (full)" "$T_RESTIC_FULL" "$(mib "$RESTIC_FULL_READ")" "-" "$(mib "$RESTIC_FULL_UP")"
printf '%-40s %9.2f %11s %11s %11s\n' "bora full backup" "$T_BORA_FULL" "$(mib "$BORA_FULL_READ")" "-" "$(mib "$BORA_FULL_UP")"
printf '%-40s %9.2f %11s %11s %11s\n' "restic $RV second backup" "${R_T[$ri]}" "$(mib "${R_READ[$ri]}")" "$(mib "$DIRTIED")" "$(mib "${R_UP[$ri]}")"
printf '%-40s %9.2f %11s %11s %11s\n' "bora incremental" "${B_T[$bi]}" "$(mib "${B_READ[$bi]}")" "$(mib "$DIRTIED")" "$(mib "${B_UP[$bi]}")"
echo
for i in "${!B_T[@]}"; do
  printf 'round %d: bora %.2f s (%.2f s in its report), read %s MiB (%.1fx dirtied), added %s MiB | restic %.2f s, read %s MiB, added %s MiB\n' \
    "$((i + 1))" "${B_T[$i]}" "${B_IN[$i]}" "$(mib "${B_READ[$i]}")" "$(echo "${B_READ[$i]} / $DIRTIED" | bc -l)" "$(mib "${B_UP[$i]}")" \
    "${R_T[$i]}" "$(mib "${R_READ[$i]}")" "$(mib "${R_UP[$i]}")"
done
echo
ratio=$(printf "%.3f" "$(echo "${B_T[$bi]} / ${R_T[$ri]}" | bc -l)")
ok=$([ "$(echo "$ratio <= 0.1" | bc -l)" = 1 ] && echo met || echo MISSED)
echo "bora/restic = $ratio (goal <= 0.1: $ok)"
echo "bytes read / bytes dirtied (bora, best round) = ${B_READ[$bi]} / $DIRTIED = $(printf "%.1f" "$(echo "${B_READ[$bi]} / $DIRTIED" | bc -l)")x"
echo "$VERIFY"
echo "(best of $RUNS rounds each, $NWRITES x 64 KiB writes per round, $(nproc) cores, image file in page cache for restic)"
[ "${VERIFY#MISMATCH}" = "$VERIFY" ] || exit 1
