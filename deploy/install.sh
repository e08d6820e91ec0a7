#!/usr/bin/env bash
# Installs the Debian packages Bora needs to build, test and benchmark.
# Idempotent; safe to run on every CI run. Needs root (or sudo).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# build: libclang for RocksDB's bindgen, a C++ compiler for RocksDB itself
# runtime: qemu-utils (qemu-img, qemu-nbd, qemu-storage-daemon), e2fsprogs (mkfs.ext4 -d)
# bench: restic and zstd as the references the benchmark is judged against, bc for its sums
PKGS=(clang libclang-dev g++ make pkg-config qemu-utils e2fsprogs zstd restic bc)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
