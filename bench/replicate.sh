#!/usr/bin/env bash
# Benchmark: second-site replication over a high-latency link. Two `bora up` clusters on
# 127.0.0.1 (site A: 1 storage node, 1 worker; site B: the same, with a TLS replica
# listener), and between A's coordinator and B's listener a delaying proxy
# (bench/delay_proxy.py) adding DELAY_MS (default 25) each way: ~50 ms round trip.
#
# A SIZE_MIB (default 256) dense mixed image (bench/gen_image.py: half random, half
# log-like text, nothing dedups) is backed up into A once. Then, for each stream count in
# STREAMS (default "1 8"), a fresh site B receives it: `bora --cluster A replicate --to B
# --streams N --json`. Printed: throughput (record bytes sent / duration), the bytes the
# proxy carried towards B ("wire": TLS, HTTP/2, gRPC and protobuf framing, digest
# queries, commit), and wire bytes per record byte sent. Then CHANGE_MIB (default 16) of
# the image is rewritten, backed up again and replicated to the last site B: the bytes
# sent against the new data, and wire bytes per new byte stored.
#
# usage: bench/replicate.sh   (env: SIZE_MIB, STREAMS, DELAY_MS, CHANGE_MIB)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release --locked -p bora-cli >&2
SIZE_MIB=${SIZE_MIB:-256}
STREAMS=${STREAMS:-"1 8"}
DELAY_MS=${DELAY_MS:-25}
CHANGE_MIB=${CHANGE_MIB:-16}
W=$(mktemp -d /tmp/bora-bench-replicate.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

# up NAME [ARGS...]: starts `bora up` with its data in $W/NAME; prints its URL.
up() {
  local name=$1; shift
  "$BORA_BIN" up --data "$W/$name" --storage-nodes 1 --workers 1 "$@" > "$W/$name.out" 2> "$W/$name.err" &
  PIDS+=($!)
  for _ in $(seq 300); do
    if grep -q '^ready ' "$W/$name.out" 2>/dev/null; then sed 's/^ready //' "$W/$name.out"; return; fi
    sleep 0.1
  done
  cat "$W/$name.err" >&2; exit 1
}
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }

python3 bench/gen_image.py "$W/disk.raw" "$SIZE_MIB" 1 2>/dev/null
A=$(up a)
"$BORA_BIN" --cluster "$A" backup --image "$W/disk.raw" --vm vm1 --json > /dev/null

printf "%-8s %10s %12s %12s %12s %10s\n" streams seconds "MiB/s" "sent MiB" "wire MiB" "wire/sent"
n=0
for s in $STREAMS; do
  n=$((n + 1))
  B=$(up "b$n" --replica-listen 127.0.0.1:0)
  url=$(field "$W/b$n/replica/remote.json" url)
  port=$(free_port)
  python3 bench/delay_proxy.py "$port" "${url#https://}" "$DELAY_MS" "$W/proxy$n.json" &
  PIDS+=($!)
  sleep 0.5
  "$BORA_BIN" --cluster "$A" remote add "b$n" "https://127.0.0.1:$port" \
    --fingerprint "$(field "$W/b$n/replica/remote.json" fingerprint)" \
    --token-file "$(field "$W/b$n/replica/remote.json" token_file)" > /dev/null
  "$BORA_BIN" --cluster "$A" replicate --to "b$n" --streams "$s" --json > "$W/r$n.json"
  sleep 1.5
  python3 - "$W/r$n.json" "$W/proxy$n.json" "$s" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p = json.load(open(sys.argv[2]))
mib = 1 << 20
print(f"{sys.argv[3]:<8} {r['duration_s']:10.2f} {r['bytes_sent']/mib/r['duration_s']:12.1f} "
      f"{r['bytes_sent']/mib:12.1f} {p['up']/mib:12.1f} {p['up']/r['bytes_sent']:10.3f}")
PY
done

# A small change: only its chunks should cross.
python3 - "$W/disk.raw" "$CHANGE_MIB" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(64 << 20)
    f.write(os.urandom(int(sys.argv[2]) << 20))
PY
"$BORA_BIN" --cluster "$A" backup --image "$W/disk.raw" --vm vm1 --json > /dev/null
before=$(field "$W/proxy$n.json" up)
"$BORA_BIN" --cluster "$A" replicate --to "b$n" --json > "$W/inc.json"
sleep 1.5
python3 - "$W/inc.json" "$W/proxy$n.json" "$before" "$CHANGE_MIB" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p = json.load(open(sys.argv[2]))
wire = p["up"] - int(sys.argv[3]); new = int(sys.argv[4]) << 20; mib = 1 << 20
print(f"\nincremental: {sys.argv[4]} MiB changed (random, stored raw): "
      f"{r['chunks_sent']} chunks sent ({r['bytes_sent']/mib:.2f} MiB), {r['chunks_skipped']} skipped, "
      f"wire {wire/mib:.2f} MiB = {wire/new:.3f} wire bytes per new byte stored, {r['duration_s']:.2f} s")
PY
