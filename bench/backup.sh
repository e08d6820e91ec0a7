#!/usr/bin/env bash
# Benchmark: full backup of a 1 GiB dense mixed image (bench/gen_image.py), side by side
# in one run with the references it is judged against:
#   - restic backup of the same file (restic from Debian's packages),
#   - zstd -1 -T2 over the same file: this machine's compression limit.
# Goal: bora <= 0.5 x restic's time and <= 1.5 x the zstd limit.
#
# usage: bench/backup.sh [SIZE_MIB] [CHUNK_SIZES...]
#   CHUNK_SIZES (bytes) run bora once per chunk size (default: 1, 2 and 4 MiB), each into
#   a fresh repository, and also report how much a clone with 64 scattered 4 KiB writes
#   uploads at that chunk size (the cost of larger chunks for incrementals).
# Env: BENCH_DIR (scratch dir, default a temp dir under /var/tmp), RUNS (default 3; the
# best of RUNS is reported for every tool, the file is in the page cache for all).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
shift || true
CHUNKS=("$@")
[ ${#CHUNKS[@]} -gt 0 ] || CHUNKS=(1048576 2097152 4194304)
RUNS=${RUNS:-3}

bash deploy/install.sh
. scripts/env.sh
cargo build --release --locked -p bora-cli >&2

W=${BENCH_DIR:-$(mktemp -d /var/tmp/bora-bench.XXXXXX)}
mkdir -p "$W"
trap 'rm -rf "$W"' EXIT
IMG=$W/mixed.raw
. bench/common.sh
mixed_image "$IMG" "$SIZE_MIB"
BYTES=$(stat -c %s "$IMG")


reset_zstd() { rm -f "$W/out.zst"; sync; }
reset_restic() { rm -rf "$W/restic"; RESTIC_PASSWORD=bench restic init --repo "$W/restic" >/dev/null 2>&1; sync; }
CUR_CHUNK=4194304
reset_bora() { rm -rf "$W/bora"; "$BORA_BIN" --repo "$W/bora" init --chunk-size "$CUR_CHUNK" >/dev/null; sync; }

T_ZSTD=$(best reset_zstd zstd -q -1 -T2 -f "$IMG" -o "$W/out.zst")
ZSTD_OUT=$(stat -c %s "$W/out.zst")
T_RESTIC=$(best reset_restic env RESTIC_PASSWORD=bench restic --repo "$W/restic" backup --quiet "$IMG")
RESTIC_OUT=$(du -sb "$W/restic" | cut -f1)

# the clone with 64 scattered 4 KiB writes, for the incremental cost of each chunk size
CLONE=$W/clone.raw
cp "$IMG" "$CLONE"
python3 - "$CLONE" "$BYTES" <<'PY'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
with open(path, "r+b") as f:
    for _ in range(64):
        f.seek(rng.randrange(size // 4096) * 4096)
        f.write(os.urandom(4096))
PY

mbps() { echo "scale=0; $BYTES / $1 / 1048576" | bc -l; }
printf '\n%-34s %9s %9s %12s\n' "backup of ${SIZE_MIB} MiB mixed image" "seconds" "MiB/s" "stored MiB"
printf '%-34s %9.2f %9s %12s\n' "zstd -1 -T2 (compression limit)" "$T_ZSTD" "$(mbps "$T_ZSTD")" "$((ZSTD_OUT / 1048576))"
printf '%-34s %9.2f %9s %12s\n' "restic $(restic version | cut -d' ' -f2) backup" "$T_RESTIC" "$(mbps "$T_RESTIC")" "$((RESTIC_OUT / 1048576))"
declare -A T_BORA
for c in "${CHUNKS[@]}"; do
  CUR_CHUNK=$c
  t=$(best reset_bora "$BORA_BIN" --repo "$W/bora" backup --image "$IMG" --vm bench --disk d0 --json)
  T_BORA[$c]=$t
  stored=$(du -sb "$W/bora/store" | cut -f1)
  inc=$("$BORA_BIN" --repo "$W/bora" backup --image "$CLONE" --vm clone --disk d0 --json \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["disks"][0]["bytes_uploaded"])')
  printf '%-34s %9.2f %9s %12s   clone upload %s MiB\n' "bora, chunk $((c / 1024)) KiB" "$t" "$(mbps "$t")" "$((stored / 1048576))" "$(echo "scale=1; $inc / 1048576" | bc -l)"
done

echo
for c in "${CHUNKS[@]}"; do
  t=${T_BORA[$c]}
  r=$(echo "scale=2; $t / $T_RESTIC" | bc -l)
  z=$(echo "scale=2; $t / $T_ZSTD" | bc -l)
  ok_r=$([ "$(echo "$r <= 0.5" | bc -l)" = 1 ] && echo met || echo MISSED)
  ok_z=$([ "$(echo "$z <= 1.5" | bc -l)" = 1 ] && echo met || echo MISSED)
  echo "chunk $((c / 1024)) KiB: bora/restic = $r (goal <= 0.5: $ok_r), bora/zstd = $z (goal <= 1.5: $ok_z)"
done
echo "(best of $RUNS runs each, $(nproc) cores, image in page cache)"
