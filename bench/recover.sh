#!/usr/bin/env bash
# Benchmark: "Recover Any" — getting data back out of a snapshot, side by side in one run
# with the references it is judged against:
#   1. restore throughput next to backup throughput for the same 1 GiB dense mixed image
#      (bench/gen_image.py), and next to the disk's own write limit (`dd conv=fsync` of the
#      image: a restore must end durable, so it pays the same fsync);
#   2. `bora serve` under `qemu-img convert`: time to first byte (from starting the server
#      to the first 4 KiB in a client's hands) and convert throughput, next to
#      `qemu-img convert` of the image file itself;
#   3. `bora files get` of one 5 MiB file out of a 1 GiB ext4 disk: bytes fetched from the
#      repository, next to the file's size and the disk's.
# Goal (issue "Recover Any"): restore throughput >= backup throughput.
#
# usage: bench/recover.sh [SIZE_MIB]
# Env: BENCH_DIR (scratch dir, default a temp dir under /var/tmp), RUNS (default 3; best of
# RUNS is reported for every timed step; the image is in the page cache for all).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${RUNS:-3}

bash deploy/install.sh
. scripts/env.sh
cargo build --release --locked -p bora-cli >&2

W=${BENCH_DIR:-$(mktemp -d /var/tmp/bora-bench.XXXXXX)}
mkdir -p "$W"
SERVE_PID=""
cleanup() {
  [ -z "$SERVE_PID" ] || kill "$SERVE_PID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
IMG=$W/mixed.raw
. bench/common.sh
mixed_image "$IMG" "$SIZE_MIB"
BYTES=$(stat -c %s "$IMG")

mbps() { echo "scale=0; $BYTES / $1 / 1048576" | bc -l; }
bora() { "$BORA_BIN" --repo "$W/bora" "$@"; }

# --- 1. backup vs restore ------------------------------------------------------------
reset_repo() { rm -rf "$W/bora"; bora init >/dev/null; sync; }
reset_out() { rm -f "$W/out.raw" "$W/out.qcow2"; sync; }
T_DD=$(best reset_out dd if="$IMG" of="$W/out.raw" bs=4M conv=fsync status=none)
T_BACKUP=$(best reset_repo "$BORA_BIN" --repo "$W/bora" backup --image "$IMG" --vm bench --disk d0 --json)
T_RESTORE=$(best reset_out "$BORA_BIN" --repo "$W/bora" restore latest --vm bench --disk d0 --to "$W/out.raw" --json)
cmp "$IMG" "$W/out.raw"
T_RESTORE_Q=$(best reset_out "$BORA_BIN" --repo "$W/bora" restore latest --vm bench --disk d0 --to "$W/out.qcow2" --json)
qemu-img compare -q "$IMG" "$W/out.qcow2"
reset_out

# --- 2. serve under qemu-img convert ---------------------------------------------------
NULL_TARGET="driver=null-co,size=$BYTES"
T_CONVERT_FILE=$(best true qemu-img convert -n -f raw "$IMG" --target-image-opts "$NULL_TARGET")
SOCK=$W/serve.sock
URL="nbd+unix:///d0?socket=$SOCK"
TTFB=""
T_CONVERT_NBD=""
for _ in $(seq "$RUNS"); do
  rm -f "$SOCK"
  t0=$(now)
  coproc SERVE { exec "$BORA_BIN" --repo "$W/bora" serve latest --vm bench --disk d0 --listen "unix:$SOCK"; }
  SERVE_PID=$SERVE_PID
  read -r line <&"${SERVE[0]}"
  qemu-io -r -f raw -c "read 0 4k" "$URL" > /dev/null
  t1=$(now)
  t=$(echo "$t1 - $t0" | bc -l)
  if [ -z "$TTFB" ] || [ "$(echo "$t < $TTFB" | bc -l)" = 1 ]; then TTFB=$t; fi
  t0=$(now)
  qemu-img convert -n -f raw "$URL" --target-image-opts "$NULL_TARGET"
  t1=$(now)
  t=$(echo "$t1 - $t0" | bc -l)
  if [ -z "$T_CONVERT_NBD" ] || [ "$(echo "$t < $T_CONVERT_NBD" | bc -l)" = 1 ]; then T_CONVERT_NBD=$t; fi
  kill "$SERVE_PID"; wait "$SERVE_PID" || true; SERVE_PID=""
done
# the served bytes are the snapshot's: qemu-img compare against the image
coproc SERVE { exec "$BORA_BIN" --repo "$W/bora" serve latest --vm bench --disk d0 --listen "unix:$SOCK"; }
SERVE_PID=$SERVE_PID
read -r line <&"${SERVE[0]}"
qemu-img compare -q -f raw -F raw "$IMG" "$URL"
kill "$SERVE_PID"; wait "$SERVE_PID" || true; SERVE_PID=""

# --- 3. one 5 MiB file out of a 1 GiB ext4 disk ----------------------------------------
TREE=$W/tree
mkdir -p "$TREE/var/log" "$TREE/home/ann"
FILLER_MIB=$((SIZE_MIB * 6 / 10))
python3 bench/gen_image.py "$TREE/var/log/filler.bin" "$FILLER_MIB" 2
head -c $((5 << 20)) /dev/urandom > "$TREE/home/ann/report.xlsx"
for i in $(seq 1 200); do head -c $((i * 1000)) /dev/urandom > "$TREE/home/ann/doc$i.txt"; done
FS_IMG=$W/fs.raw
mkfs.ext4 -q -F -d "$TREE" "$FS_IMG" "${SIZE_MIB}M"
bora backup --image "$FS_IMG" --vm files --disk d0 --json > /dev/null
rm -f "$W/report.xlsx"
GOT=$(bora files get latest --vm files --disk d0 /home/ann/report.xlsx --to "$W/report.xlsx" --json)
cmp "$TREE/home/ann/report.xlsx" "$W/report.xlsx"
FETCHED=$(echo "$GOT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_fetched"])')
FSIZE=$(stat -c %s "$TREE/home/ann/report.xlsx")
FS_BYTES=$(stat -c %s "$FS_IMG")

printf '\n%-46s %9s %9s\n' "${SIZE_MIB} MiB dense mixed image" "seconds" "MiB/s"
printf '%-46s %9.2f %9s\n' "dd conv=fsync of the image (disk write limit)" "$T_DD" "$(mbps "$T_DD")"
printf '%-46s %9.2f %9s\n' "bora backup (fresh repository)" "$T_BACKUP" "$(mbps "$T_BACKUP")"
printf '%-46s %9.2f %9s\n' "bora restore to a raw file" "$T_RESTORE" "$(mbps "$T_RESTORE")"
printf '%-46s %9.2f %9s\n' "bora restore to a qcow2 file (qemu-nbd)" "$T_RESTORE_Q" "$(mbps "$T_RESTORE_Q")"
printf '%-46s %9.2f %9s\n' "qemu-img convert of the image file" "$T_CONVERT_FILE" "$(mbps "$T_CONVERT_FILE")"
printf '%-46s %9.2f %9s\n' "qemu-img convert from bora serve (NBD)" "$T_CONVERT_NBD" "$(mbps "$T_CONVERT_NBD")"
printf '%-46s %9.3f\n' "serve: start to first 4 KiB read by a client" "$TTFB"
echo
echo "files get of a $((FSIZE >> 20)) MiB file out of a $((FS_BYTES >> 20)) MiB ext4 disk:" \
  "$(echo "scale=2; $FETCHED / 1048576" | bc -l) MiB fetched" \
  "($(echo "scale=2; $FETCHED / $FSIZE" | bc -l) x the file, $(echo "scale=4; $FETCHED / $FS_BYTES" | bc -l) x the disk)"
echo
r=$(echo "scale=2; $T_BACKUP / $T_RESTORE" | bc -l)
ok=$([ "$(echo "$r >= 1" | bc -l)" = 1 ] && echo met || echo MISSED)
echo "restore throughput / backup throughput = $r (goal >= 1: $ok)"
echo "(best of $RUNS runs each, $(nproc) cores, image in page cache)"
